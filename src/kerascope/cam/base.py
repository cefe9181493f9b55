"""What every class-activation method shares: the target layer, the class score and its gradient.

A method only says how it weights the target layer's channels (``channel_weights``); the base
runs the forward pass, gets the gradients, applies the weights, the ReLU and the normalisation
(the split of pytorch-grad-cam's ``BaseCAM``).

Two ways to get the gradient of the class score ``y_c`` (the pre-softmax logit) with respect to
the activations ``A`` of the target layer:

* **analytic**: when ``A`` reaches the logits only through GlobalAveragePooling2D -> (Dropout)
  -> Dense, ``y_c = b_c + sum_k W[k, c] * mean_ij A[i, j, k]``, so
  ``dy_c / dA[i, j, k] = W[k, c] / (h * w)`` at every position. One forward pass to ``A`` is
  enough (run by the fast inference engine: onnxruntime on CPU), the rest is a matrix product.
* **autodiff**: any other graph (a ``layer=`` inside a block, Flatten or LayerNorm heads) goes
  through ``gradients.py``: d y_c / d delta at delta = 0, with ``delta`` added to ``A`` in a
  rebuilt graph, so skip connections around the layer and nested models need no hooks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascope.cam.graph import LayerError, branch_of, candidate_layers, find_layer, rebuild
from kerascope.cam.head import Head, activate, analyse_head  # noqa: F401  (Head: API)
from kerascope.cam.smoothing import augmented_maps, first_component, normalise
from kerascope.errors import KerascopeError
from kerascope.inference import Pending
from kerascope.zoo.models import Classifier

_log = logging.getLogger(__name__)


class MethodError(KerascopeError, ValueError):
    """A method that cannot explain this model (e.g. CAM without a GAP + Dense head)."""


class Probe:
    """The target layer of one model and the two ways to reach its gradient, built once.

    Cached per (model, layer) on ``Classifier.extra``, so every method and every call reuses
    the same inference session and the same compiled gradient function (no retracing).
    """

    def __init__(self, model: Any, target: Any, layer: str | None = None):
        import keras

        self.model, self.target, self.layer = model, target, layer or target.name
        inputs, features, output = rebuild(model, target)
        self.head = analyse_head(features, output)
        self.feature_shape = tuple(features.shape[1:])
        self._features_model = keras.Model(inputs[0], features, name=f"{model.name}_features")
        self._inputs, self._features = inputs, features
        self._gradients = None
        self._models: dict[str, Any] = {}  # sub-models for the gradient-free methods, by use

    def features(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Target-layer activations from the inference engine (onnxruntime on CPU);
        ``batch_size``: the job's, which a compiling engine pads a partial batch to."""
        from kerascope.inference import compiled

        forward = compiled(self._features_model)  # built on the first call, cached on the model
        return np.asarray(forward(pixels, batch_size), dtype=np.float32)

    @property
    def engine(self) -> str:
        """``"onnx"`` or ``"keras"``: the engine :meth:`features` runs on."""
        from kerascope.inference import engine_name

        return engine_name(self._features_model)

    def analytic(self, pixels: np.ndarray, targets: np.ndarray, batch_size=None) -> tuple:
        """Features and the closed-form gradient ``W[k, c] / (h * w)`` (module docstring)."""
        a = self.features(pixels, batch_size)
        logits = a.mean(axis=(1, 2)) @ self.head.kernel + self.head.bias
        probs = activate(logits, self.head.activation)
        classes = np.where(targets < 0, logits.argmax(-1), targets)
        g = self.head.kernel[:, classes].T / (a.shape[1] * a.shape[2])
        grads = np.broadcast_to(g[:, None, None, :], a.shape)  # a view: no copy per position
        return a, grads, classes, probs[np.arange(len(a)), classes]

    def autodiff(self, pixels: np.ndarray, targets: np.ndarray) -> tuple:
        """Features and gradients by automatic differentiation on the active backend."""
        if self._gradients is None:
            self._gradients = self._gradient_fn()
        return self._gradients(pixels, targets)

    def forward(self, pixels: np.ndarray, targets: np.ndarray, batch_size=None) -> tuple:
        """Features, classes and probabilities without gradients (gradient-free methods).

        On an analytic head that is :meth:`analytic` (its gradient is a free broadcast view);
        otherwise one pass of ``image -> [features, head input]`` on the inference engine.
        """
        if self.head.analytic:
            return self.analytic(pixels, targets, batch_size)
        from kerascope.inference import compiled

        both = compiled(self._model("both", [self._features, self.head.score_input]))
        a, h = both(pixels, batch_size)
        logits, probs = self.scores(h)
        classes = np.where(targets < 0, logits.argmax(-1), targets)
        return np.asarray(a, np.float32), None, classes, probs[np.arange(len(a)), classes]

    def scores(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) from the head input ``h`` (the class score is the logit)."""
        h = np.asarray(h, np.float32)
        if self.head.kind == "output":
            return h, h
        logits = h @ self.head.kernel + self.head.bias if self.head.kind == "dense" else h
        return logits, activate(logits, self.head.activation)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Class logits of whole images (uint8 or float 0..255), on the inference engine."""
        from kerascope.inference import compiled

        return self.scores(compiled(self._model("logits", self.head.score_input))(pixels))[0]

    def tail(self, pixels: np.ndarray, analytic: bool = True):
        """``run(i, activations) -> logits``: the network after the target layer, for image i.

        Analytic head: the closed form ``b + mean_ij(A) W``. Otherwise the layers after the
        target on given activations, on the inference engine; when something after the target
        also reads an earlier tensor (a skip connection around it), the whole network runs
        with the target's output replaced (``A + delta``, ``delta = A' - A``).
        """
        head = self.head
        if head.analytic and analytic:
            return lambda i, a: a.mean(axis=(1, 2)) @ head.kernel + head.bias
        from kerascope.inference import compiled

        if "tail" not in self._models:
            self._models["tail"] = self._tail_model()
        forward = compiled(self._models["tail"])
        if len(self._models["tail"].inputs) == 1:
            return lambda i, a: self.scores(forward(a))[0]
        original = self.features(pixels)

        def run(i: int, a: np.ndarray) -> np.ndarray:
            images = np.repeat(pixels[i : i + 1], len(a), axis=0)
            return self.scores(forward([images, a - original[i]]))[0]

        return run

    def _tail_model(self):
        import keras

        given = keras.Input(shape=self.feature_shape, name="kerascope_cam_activations")
        _, features, output = rebuild(self.model, self.target, replace=given)
        h = analyse_head(features, output).score_input
        try:
            return keras.Model(given, h, name="kerascope_cam_tail")
        except ValueError:  # the layers after the target also read the image: skip connection
            delta = keras.Input(shape=self.feature_shape, name="kerascope_cam_delta_input")
            inputs, features, output = rebuild(self.model, self.target, delta)
            h = analyse_head(features, output).score_input
            return keras.Model([inputs[0], delta], h, name="kerascope_cam_tail")

    def _model(self, key: str, outputs):
        """The model from the image to ``outputs`` (tensors of the rebuilt graph), built once."""
        import keras

        if key not in self._models:
            self._models[key] = keras.Model(self._inputs[0], outputs, name=f"kerascope_cam_{key}")
        return self._models[key]

    def traces(self) -> int:
        """How many times the gradient function was compiled (0 before the first call)."""
        return self._gradients.traces() if self._gradients is not None else 0

    def fused(self, combine, key: str, precision: str = "float32"):
        """The device function of `kerascope.cam.gradients.fused_fn` for one method's
        ``combine`` (cached by ``key`` and precision, so a job compiles once per batch shape)."""
        from kerascope.cam.gradients import fused_fn

        cache = self._models.setdefault("fused", {})
        if (key, precision) not in cache:
            probe, score = self._probe_and_score()
            cache[(key, precision)] = fused_fn(probe, score, combine, precision)
        return cache[(key, precision)]

    def _gradient_fn(self):
        from kerascope.cam.gradients import gradient_fn

        return gradient_fn(*self._probe_and_score())

    def _probe_and_score(self):
        """``keras.Model([image, delta], [features, head input])`` and the score function."""
        import keras

        if "probe" in self._models:
            return self._models["probe"]
        delta = keras.Input(shape=self.feature_shape, name="kerascope_cam_delta_input")
        inputs, features, output = rebuild(self.model, self.target, delta)
        h = analyse_head(features, output).score_input  # same structure, the rebuilt tensor
        probe = keras.Model([*inputs, delta], [features, h], name=f"{self.model.name}_probe")
        head, ops = self.head, keras.ops
        kernel = bias = None  # backend tensors: torch would hand NumPy operands to NumPy
        if head.kind == "dense":
            kernel, bias = ops.convert_to_tensor(head.kernel), ops.convert_to_tensor(head.bias)

        def score(h):
            logits = ops.add(ops.matmul(h, kernel), bias) if head.kind == "dense" else h
            if head.kind == "output" or head.activation == "linear":
                return logits, logits
            fn = ops.softmax if head.activation == "softmax" else ops.sigmoid
            return logits, fn(logits)

        self._models["probe"] = (probe, score)
        return probe, score


def as_classifier(clf: Classifier | Any) -> Classifier:
    """Accept a bare Keras model too (labels ``class_i``, input size from its input shape),
    and a zoo name, run folder or model file, as every other entry point does."""
    if isinstance(clf, Classifier):
        return clf
    if isinstance(clf, str | os.PathLike):
        from kerascope.zoo.shared import shared_model

        return shared_model(clf)
    if not hasattr(clf, "input_shape"):
        raise TypeError(f"a model is a Classifier, a Keras model, or a zoo name, run folder or "
                        f"model file, got {type(clf).__name__}")  # fmt: skip
    shape = clf.input_shape[0] if isinstance(clf.input_shape, list) else clf.input_shape
    labels = [(str(i), f"class_{i}") for i in range(int(clf.output_shape[-1]))]
    return Classifier(model=clf, name=clf.name, input_size=(shape[1], shape[2]), labels=labels)


def get_probe(clf: Classifier, layer: str | None) -> Probe:
    """The cached probe for ``layer`` (``None``: the zoo's ``cam_layer``, else auto-detected)."""
    model = clf.model
    if len(model.inputs) != 1:
        raise LayerError(f"model '{model.name}' has {len(model.inputs)} inputs; explain needs 1")
    if layer is None and clf.cam_layer and clf.cam_layer in candidate_layers(model):
        layer = clf.cam_layer
    target = find_layer(model, layer)
    key = layer if layer and "/" in layer else target.name  # "branch/name": not the same layer
    probes = clf.extra.setdefault("cam_probes", {})
    if key not in probes:
        probes[key] = Probe(model, target, key)
        if layer is None and (branches := branch_of(model, target)):
            _log.warning("'%s' has %d branches (%s): the heatmaps show branch '%s' only "
                         "('%s/%s'); --layer BRANCH/LAYER explains another",
                         model.name, len(branches[1]), ", ".join(branches[1]), branches[0],
                         branches[0], target.name)  # fmt: skip
    return probes[key]


@dataclass
class Activations:
    """One batch at the target layer: what a method combines into maps."""

    pixels: np.ndarray  # (N, H, W, 3) the images (float when augmented), 0..255
    features: np.ndarray  # A (N, h, w, K)
    grads: np.ndarray | None  # dy_c / dA (N, h, w, K); None for gradient-free methods
    classes: np.ndarray  # (N,) the class each map explains
    probe: Probe


def model_pixels(clf: Any, pixels: np.ndarray) -> np.ndarray:
    """A batch at ``clf``'s input size as uint8, or a ValueError naming the shape expected:
    what every explain method takes. Other dtypes follow `kerascope.images.as_rgb_array`'s
    rules for the batch as a whole (floats all in [0, 1] scaled, else rounded and clipped;
    uint16 divided by 257; NaN refused): a 0..1 float batch was rounded to black and explained
    as a matchstick."""
    pixels = np.asarray(pixels)
    expected = (*clf.input_size, 3)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"expected pixels of shape (N, {expected}), got {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    a = pixels
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("float pixels contain NaN or infinity")
        a = np.rint(a * (255.0 if a.size and a.max() <= 1.0 else 1.0))  # one scale per batch
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < -1 or hi > 256:  # a resampled frame's slight overshoot is clipped, as before
        raise ValueError(f"pixel values range {lo:g}..{hi:g}; expected 0..255 (floats: or 0..1)")
    return np.clip(a, 0, 255).astype(np.uint8)


class BaseCAM:
    """Forward, gradients, channel weights, ReLU, normalisation; subclasses weight channels.

    Args:
        clf: a `Classifier` (or a bare Keras model).
        layer: target layer name; default the zoo's ``cam_layer``, else the last spatial layer.
        analytic: ``None`` picks the closed-form gradient when the head allows it; ``False``
            forces automatic differentiation (for checks); ``True`` insists on closed form.
        aug_smooth: average the maps of flipped and intensity-scaled copies (`smoothing`).
        eigen_smooth: first principal component of the weighted activations instead of their
            sum over channels (`smoothing.first_component`).
    """

    name = "base"
    cost = ""  # for --help: passes per image, and time relative to Grad-CAM when it differs
    sanity = True  # passes the weight-randomisation sanity check (Adebayo et al. 2018)
    needs_dense_head = False  # CAM reads the Dense weights, so it needs GAP + Dense
    needs_gradients = True  # False: one forward pass (no backward) gives what it needs
    class_independent = False  # True: the same map whatever the class (a class is refused)
    precision_note = ""  # why auto computes float32, where it does (`PixelMethod`)

    def __init__(
        self,
        clf: Classifier | Any,
        layer: str | None = None,
        analytic=None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        precision: str | None = None,
    ):
        from kerascope.precision import map_precision

        self.clf = as_classifier(clf)
        self.probe = get_probe(self.clf, layer)
        self.layer = self.probe.layer
        self.aug_smooth, self.eigen_smooth = bool(aug_smooth), bool(eigen_smooth)
        possible = self.probe.head.analytic
        if (analytic or self.needs_dense_head) and not possible:
            raise MethodError(
                f"{self.name} needs layer '{self.layer}' to feed GlobalAveragePooling2D -> "
                f"Dense directly, which '{self.clf.model.name}' does not; use gradcam"
            )
        self.analytic = possible if analytic is None else bool(analytic)
        wanted = map_precision(precision)
        # The whole map on the device (`gradients.fused_fn`) wherever the network runs on the
        # Keras engine (GPUs; CPUs when asked) or in reduced precision, which onnxruntime's CPU
        # path does not offer; on a CPU's onnx engine the measured-faster host path stays.
        self.on_device = self._device_capable() and (
            wanted != "float32" or self.probe.engine == "keras"
        )
        self.precision = wanted if self.on_device else "float32"

    @property
    def runs_async(self) -> bool:
        """Whether :meth:`start_batch` returns before the device has finished (the fused path:
        JAX and CUDA queue the work), so a job gains by dispatching its next batch first."""
        return self.on_device

    def _device_capable(self) -> bool:
        import keras

        return (
            type(self).device_map is not BaseCAM.device_map
            and not (self.aug_smooth or self.eigen_smooth)
            and keras.backend.backend() in ("jax", "torch")
            and analytic_ok(self)
        )

    def device_map(self, features, grads, classes):
        """(N, h, w) map before the ReLU from A, g and the classes, written with ``keras.ops``
        so it runs inside the compiled device function; the methods that have one override it
        (the same equation as their ``channel_weights`` / ``combine``)."""
        raise NotImplementedError

    def compilations(self) -> int:
        """How many times this method's device function was compiled (JAX; 0 elsewhere)."""
        if not self.on_device:
            return 0
        return self.probe.fused(self.device_map, self.name, self.precision).traces()

    def channel_weights(self, features: np.ndarray, grads: np.ndarray, classes: np.ndarray):
        """(N, K) weight of each channel of ``features`` (N, h, w, K) for the class."""
        raise NotImplementedError

    @classmethod
    def map_precision(cls, precision: str | None) -> str:
        """What this method's maps compute in when ``precision`` is asked for."""
        from kerascope.precision import map_precision

        return map_precision(precision)

    def combine(self, batch: Activations) -> np.ndarray:
        """(N, h, w) map before the ReLU: ``sum_k w_k A^k`` (Selvaraju et al. 2017, Eq. 2).

        The hook a method overrides when its map is not a weighted sum of whole channels
        (HiResCAM, LayerCAM, Eigen-CAM) or its weights need more than A and g (Score-CAM).
        """
        weights = self.channel_weights(batch.features, batch.grads, batch.classes)
        return self.weighted_sum(batch.features, np.asarray(weights, np.float32))

    def weighted_sum(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum_k w_k A^k``, or with ``eigen_smooth`` the first component of ``w_k A^k``."""
        if self.eigen_smooth:
            return self.reduce_channels(features * weights[:, None, None, :])
        return np.einsum("nhwk,nk->nhw", features, weights)

    def reduce_channels(self, weighted: np.ndarray) -> np.ndarray:
        """(N, h, w, K) -> (N, h, w): the sum over channels, or its first principal component."""
        if self.eigen_smooth:
            return first_component(weighted)
        return weighted.sum(axis=-1)

    def raw_maps(self, pixels: np.ndarray, targets: np.ndarray, batch_size=None) -> tuple:
        """ReLU(combined map) before normalisation, averaged over augmentations if asked."""
        if self.aug_smooth:
            from kerascope.cam.perturbation import neutral_pixel

            neutral = neutral_pixel(self.clf.model)
            return augmented_maps(self._raw_maps, pixels, targets, neutral)
        return self._raw_maps(pixels, targets, batch_size)

    def _raw_maps(self, pixels: np.ndarray, targets: np.ndarray, batch_size=None) -> tuple:
        if self.analytic:
            features, grads, classes, probs = self.probe.analytic(pixels, targets, batch_size)
        elif self.needs_gradients:
            features, grads, classes, probs = self.probe.autodiff(pixels, targets)
        else:
            features, grads, classes, probs = self.probe.forward(pixels, targets, batch_size)
        batch = Activations(pixels, features, grads, np.asarray(classes), self.probe)
        maps = np.maximum(self.combine(batch), 0.0).astype(np.float32)
        return maps, batch.classes.astype(np.int64), np.asarray(probs, np.float32)

    def explain_batch(self, pixels: np.ndarray, targets=None, *args, **options) -> tuple:
        """Heatmaps for a batch at ``clf.input_size``: :meth:`start_batch`'s, waited for.

        Args:
            pixels: (N, h, w, 3) uint8 RGB at the classifier's input size.
            targets: ``None`` (top-1 of each image), one class index for all, or one each.
            pad_to: on the device path, run the batch padded to this many images (a job passes
                its batch size, so its last partial batch compiles nothing new).
            upsample: maps at the input size (bilinear, renormalised; on the device path done
                there) instead of the feature resolution.
            levels: maps as uint8 heat levels 0..255 (`kerascope.cam.overlay.to_levels`: the
                levels pictures are drawn in; on the device path quantised there, so a quarter
                of the bytes cross back). Numbers (scores, comparisons) keep the float maps.

        Returns:
            (maps (N, fh, fw) float32 in [0, 1] (uint8 with ``levels``), class indices (N,),
            probabilities (N,)).
        """
        return tuple(self.start_batch(pixels, targets, *args, **options).result())

    def start_batch(
        self,
        pixels: np.ndarray,
        targets=None,
        pad_to: int | None = None,
        upsample: bool = False,
        levels: bool = False,
    ) -> Pending:
        """:meth:`explain_batch` dispatched: on the device path its ``result()`` waits for the
        device, so the caller prepares the next batch meanwhile; elsewhere computed now."""
        pixels = model_pixels(self.clf, pixels)
        targets = self._targets(targets, len(pixels))
        size = tuple(self.clf.input_size) if upsample else None
        if self.on_device:
            run = self.probe.fused(self.device_map, self.name, self.precision)
            return run.start(pixels, targets, size=size, pad_to=pad_to, levels=levels)
        return Pending(list(self._host_maps(pixels, targets, size, levels, pad_to)), len(pixels),
                       False)  # fmt: skip

    def _host_maps(self, pixels, targets, size, levels, pad_to=None) -> tuple:
        maps, classes, probs = self.raw_maps(pixels, targets, pad_to)
        maps = normalise(maps)
        if size is not None and maps.shape[1:] != size:
            from kerascope.cam.overlay import upsample as resample

            maps = normalise(np.stack([resample(m, size) for m in maps]))
        if levels:
            from kerascope.cam.overlay import to_levels

            maps = to_levels(maps)
        return maps, classes, probs

    def _targets(self, targets, n: int) -> np.ndarray:
        """Class indices, one per image or one for all (-1: each image's top class); a name,
        a fraction (2.7 explained class 2) or a count that is not the batch's is refused."""
        if targets is None:
            return np.full(n, -1, np.int64)
        given = np.asarray(targets)
        whole = given.dtype.kind in "iu" or (
            given.dtype.kind == "f" and np.all(np.isfinite(given)) and np.all(given % 1 == 0)
        )
        if not whole or given.ndim > 1:
            raise ValueError(f"targets are class indices (one, or one per image), got "
                             f"{targets!r:.60}; `kerascope.cam.explain.resolve_target` reads a "
                             "name")  # fmt: skip
        if given.ndim == 1 and given.size not in (1, n):
            raise ValueError(f"{given.size} targets for {n} image(s): give one per image, or one")
        t = np.broadcast_to(given.astype(np.int64), (n,)).copy()
        bad = t[(t < -1) | (t >= self.clf.num_classes)]
        if bad.size:
            raise ValueError(f"class index {bad[0]} outside 0..{self.clf.num_classes - 1}")
        return t


def analytic_ok(cam: BaseCAM) -> bool:
    """Whether the device path computes what this method's host path computes: CAM reads the
    Dense weights, which only a GAP + Dense head has (there its map is Grad-CAM's)."""
    return not cam.needs_dense_head or cam.probe.head.analytic
