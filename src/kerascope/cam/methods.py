"""The class-activation methods: each says only how it weights the target layer's channels
(``channel_weights``) or, when its map is not a weighted channel sum, how it combines them
(``combine``).

Notation: ``A`` (N, h, w, K) the target layer's activations, ``g = dy_c / dA`` the gradient of
the class score (the pre-softmax logit ``y_c``), ``Z = h * w``. The base class then forms
``ReLU(sum_k w_k A^k)`` (or the method's own map) and normalises it.

``cost`` is what one image costs, for ``--help``; the times relative to Grad-CAM were measured
on CPU (EfficientNet-Lite0, 224 px, batch 8, 2 cores). ``sanity`` records the weight
randomisation check of Adebayo et al. 2018 (tests/test_cam_methods.py): with Lite0's classifier
and last block re-drawn at random, the map must correlate below 0.5 with the trained model's on
each of four real photos. Grad-CAM++ and LayerCAM fail it (highest 0.572 and 0.570, on
coffee.png; mean 0.435 and 0.443): both keep only positive gradients and weight them by the
activations, so a map survives the randomisation partly as the layer's own activation pattern.
"""

from __future__ import annotations

import re

import numpy as np

from kerascope.cam.base import Activations, BaseCAM
from kerascope.cam.pixel import PIXEL_ALIASES, PIXEL_METHODS


def ops():
    """``keras.ops``, imported when a device map is traced (not when the CLI lists methods)."""
    from keras import ops as keras_ops

    return keras_ops


def _weighted(features, weights):
    """``sum_k w_k A^k`` on the device: (N, h, w, K), (N, K) -> (N, h, w)."""
    return ops().einsum("nhwk,nk->nhw", features, weights)


class CAM(BaseCAM):
    """Class activation mapping (Zhou et al. 2016, "Learning Deep Features for Discriminative
    Localization", Sec. 2): ``M_c(x, y) = sum_k w_k^c f_k(x, y)`` with ``w_k^c`` the Dense
    weight from channel k to class c. Defined only for a GAP + Dense head.

    On such a head Grad-CAM's weights are ``W[k, c] / Z`` (the gradient is constant over
    space), so CAM and Grad-CAM give the same map up to the factor ``Z``, which normalisation
    removes (Selvaraju et al. 2017, Sec. 3.1).
    """

    name = "cam"
    cost = "1 forward (GAP + Dense head only)"
    needs_dense_head = True
    needs_gradients = False

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        return self.probe.head.kernel[:, classes].T

    def device_map(self, features, grads, classes):
        # On the GAP + Dense head CAM requires, dy_c/dA = W[k, c] / Z everywhere: Grad-CAM's
        # weights are CAM's divided by Z, which the normalisation removes (docstring above).
        return _weighted(features, ops().mean(grads, axis=(1, 2)))


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1): ``w_k^c = 1/Z sum_ij dy_c / dA_ij^k``, the
    gradient global-average-pooled over space; the map is Eq. 2, ``ReLU(sum_k w_k^c A^k)``."""

    name = "gradcam"
    cost = "1 forward + 1 backward"

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        return np.asarray(grads).mean(axis=(1, 2))

    def device_map(self, features, grads, classes):
        return _weighted(features, ops().mean(grads, axis=(1, 2)))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018): positive gradients weighted per position.

    Weights, Eq. 10: ``w_k^c = sum_ij alpha_ij^kc ReLU(dY^c / dA_ij^k)``.
    With the exponential score ``Y^c = exp(y_c)`` and a piecewise-linear network, the higher
    derivatives are powers of the first, giving Eq. 19:

        alpha_ij^kc = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3),  g = dy_c / dA

    ``dY^c/dA = exp(y_c) g``: the positive factor ``exp(y_c)`` is the same for every channel
    and is dropped with the normalisation. Dividing Eq. 19 by ``g^2`` (where ``g != 0``; alpha
    is 0 elsewhere, as in the reference code) gives the form used here,
    ``alpha = 1 / (2 + g sum_ab A_ab^k)``, which does not underflow for small gradients.

    Closed form on a GAP + Dense head: ``g = W[k, c] / Z`` everywhere and
    ``sum_ab A_ab^k = Z P_k`` (P the pooled features), so ``alpha_k = 1 / (2 + P_k W[k, c])``
    and ``w_k = alpha_k ReLU(W[k, c])``: the analytic path feeds that constant gradient in.
    """

    name = "gradcam++"
    cost = "1 forward + 1 backward"
    sanity = False  # see the module docstring

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        grads = np.asarray(grads)
        positions = 1
        if grads.strides[1] == grads.strides[2] == 0:  # the analytic head's broadcast gradient:
            grads, positions = grads[:, :1, :1], grads.shape[1] * grads.shape[2]  # sum = Z x one
        g = grads.astype(np.float64)
        total = features.sum(axis=(1, 2), keepdims=True, dtype=np.float64)
        denominator = 2.0 + g * total
        ok = (g != 0) & (denominator != 0)
        alpha = np.where(ok, 1.0 / np.where(ok, denominator, 1.0), 0.0)
        return positions * (alpha * np.maximum(g, 0.0)).sum(axis=(1, 2))

    def device_map(self, features, grads, classes):
        o = ops()
        total = o.sum(features, axis=(1, 2), keepdims=True)
        denominator = 2.0 + grads * total
        ok = o.logical_and(grads != 0, denominator != 0)
        alpha = o.where(ok, 1.0 / o.where(ok, denominator, 1.0), 0.0)
        return _weighted(features, o.sum(alpha * o.relu(grads), axis=(1, 2)))


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks"): no gradients; a channel's weight is the class score of
    the input masked by that channel's map.

    Eq. 3-4: ``H^k = s(Up(A^k))``, the map upsampled to the input and min-max normalised to
    [0, 1]; the input is masked as ``X o H^k``. Eq. 6-8: ``w_k = C(A^k)``, the class score
    of the masked input. The score here is pytorch-grad-cam's: the softmax over the K channels
    of the masked inputs' class *logits* (the authors' code uses each masked input's class
    probability, softmax over classes; both drop the constant baseline term). The mask blends
    towards the pixel the model's preprocessing maps to zero, as masking pytorch-grad-cam's
    normalised tensor does, not towards black. K forwards per image, batched.
    """

    name = "scorecam"
    cost = "K masked forwards (K channels, ~300x Grad-CAM)"
    needs_gradients = False

    def combine(self, batch: Activations) -> np.ndarray:
        from kerascope.cam.perturbation import masked_scores, neutral_pixel

        neutral = neutral_pixel(self.clf.model)
        logits = masked_scores(
            self.probe.logits, batch.pixels, batch.features, batch.classes, neutral
        )
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return self.weighted_sum(batch.features, (e / e.sum(axis=1, keepdims=True)))


class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", Eq. 3):
    ``w_k = (y_c - y_c^k) / y_c``, ``y_c^k`` the class logit with channel k of the target
    layer set to zero; divided by ``|y_c|`` here, so a class scored below zero keeps the sign
    of its evidence (the paper explains the top class, whose logit is positive).

    Closed form on a GAP + Dense head: zeroing channel k lowers the pooled feature ``P_k`` to
    0, so ``y_c - y_c^k = W[k, c] P_k`` and no network runs again. Otherwise the layers after
    the target run on K ablated copies per image, batched on the inference engine.
    """

    name = "ablationcam"
    cost = "K ablated tail forwards (GAP + Dense head: closed form, ~1x Grad-CAM)"
    needs_gradients = False

    def combine(self, batch: Activations) -> np.ndarray:
        from kerascope.cam.perturbation import ablated_scores

        a, classes, head = batch.features, batch.classes, self.probe.head
        if self.analytic:
            pooled = a.mean(axis=(1, 2), dtype=np.float64)
            kernel = head.kernel[:, classes].T.astype(np.float64)
            score = (pooled * kernel).sum(axis=1) + head.bias[classes]
            drop = pooled * kernel  # y_c - y_c^k
        else:
            tail = self.probe.tail(batch.pixels, analytic=False)
            score = _scores(tail, a, classes)
            drop = score[:, None] - ablated_scores(tail, a, classes)
        # |y_c|: dividing by a negative score (a class the image does not have, a binary run's
        # class 0 scoring -z) turned its evidence against into evidence for, one map per class
        score = np.maximum(np.abs(score), 1e-12)
        return self.weighted_sum(a, (drop / score[:, None]).astype(np.float32))


def _scores(tail, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(N,) class logits of the unablated activations, through the same tail."""
    return np.array([tail(i, features[i : i + 1])[0, c] for i, c in enumerate(classes)])


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM", Eq. 13):
    ``w_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k``, the gradient averaged with the
    activations as weights. Channels with no activation get weight 0 (their A is 0 anyway)."""

    name = "xgradcam"
    cost = "1 forward + 1 backward"

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        total = features.sum(axis=(1, 2), dtype=np.float64)
        mass = np.einsum("nhwk,nhwk->nk", features, np.asarray(grads), dtype=np.float64)
        ok = total != 0
        return np.where(ok, mass / np.where(ok, total, 1.0), 0.0)

    def device_map(self, features, grads, classes):
        o = ops()
        total = o.sum(features, axis=(1, 2))
        mass = o.sum(features * grads, axis=(1, 2))
        ok = total != 0
        return _weighted(features, o.where(ok, mass / o.where(ok, total, 1.0), 0.0))


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations", Eq. 4): ``M = ReLU(sum_k g^k o A^k)``, the gradient multiplied elementwise,
    not averaged over space first. Equal to Grad-CAM when the gradient is constant over space
    (a GAP + Dense head)."""

    name = "hirescam"
    cost = "1 forward + 1 backward"

    def combine(self, batch: Activations) -> np.ndarray:
        return self.reduce_channels(np.asarray(batch.grads) * batch.features)

    def device_map(self, features, grads, classes):
        return ops().sum(grads * features, axis=-1)


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal
    Components", Eq. 5-6): the projection of A on its first principal component (the first
    right singular vector of the centred (h*w, K) matrix). Class-independent: it shows what
    the layer responds to most, whatever the class. The sign is chosen so the larger extreme
    is positive (`smoothing.first_component`)."""

    name = "eigencam"
    cost = "1 forward + an SVD, class-independent"
    needs_gradients = False
    class_independent = True

    def combine(self, batch: Activations) -> np.ndarray:
        from kerascope.cam.smoothing import first_component

        return first_component(batch.features)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps
    for Localization", Eq. 5-6): ``M = ReLU(sum_k ReLU(g^k) o A^k)``, each position weighted by
    its own positive gradient; meaningful on early, high-resolution layers too."""

    name = "layercam"
    cost = "1 forward + 1 backward"
    sanity = False  # see the module docstring

    def combine(self, batch: Activations) -> np.ndarray:
        return self.reduce_channels(np.maximum(np.asarray(batch.grads), 0.0) * batch.features)

    def device_map(self, features, grads, classes):
        return ops().sum(ops().relu(grads) * features, axis=-1)


METHODS: dict[str, type[BaseCAM]] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
    **PIXEL_METHODS,  # pixel-level attribution (cam/pixel.py): saliency, smoothgrad, ig, ...
}
CAM_METHODS = tuple(m for m in METHODS if m not in PIXEL_METHODS)
ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", **PIXEL_ALIASES}


def check_class_choice(method: str, target: object) -> None:
    """Refuse a class for a method whose map ignores it: eigencam with --class tabby drew
    the same map as for the top class, labelled "tabby"."""
    try:
        chosen = get_method(method)
    except ValueError:
        return  # an unknown method is said where the explainer is built
    if target is not None and chosen.class_independent:
        raise ValueError(f"{chosen.name} is class-independent (its map is the same "
                         "for every class): leave the class out, or pick a method that follows "
                         "it, e.g. gradcam")  # fmt: skip


def get_method(name: str) -> type[BaseCAM]:
    """The method class for ``name``: case, spaces, ``-`` and ``_`` are ignored, so
    ``Score-CAM``, ``score_cam`` and ``ScoreCAM`` all mean ``scorecam``. Options of the pixel
    methods follow a colon: ``ig:steps=64,baseline=blurred`` (`kerascope.cam.pixel`)."""
    base, colon, options = str(name).partition(":")
    key = re.sub(r"[\s_\-]+", "", base).lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if not colon:
        return METHODS[key]
    if key not in PIXEL_METHODS:
        raise ValueError(f"method {key} takes no options, got {name!r}")
    return PIXEL_METHODS[key].configured(options)
