"""CAM, Grad-CAM and Grad-CAM++: each says only how it weights the target layer's channels.

Notation: ``A`` (N, h, w, K) the target layer's activations, ``g = dy_c / dA`` the gradient of
the class score (the pre-softmax logit ``y_c``), ``Z = h * w``. The base class then forms
``ReLU(sum_k w_k A^k)`` and normalises it.
"""

from __future__ import annotations

import numpy as np

from kerascope.cam.base import BaseCAM


class CAM(BaseCAM):
    """Class activation mapping (Zhou et al. 2016, "Learning Deep Features for Discriminative
    Localization", Sec. 2): ``M_c(x, y) = sum_k w_k^c f_k(x, y)`` with ``w_k^c`` the Dense
    weight from channel k to class c. Defined only for a GAP + Dense head.

    On such a head Grad-CAM's weights are ``W[k, c] / Z`` (the gradient is constant over
    space), so CAM and Grad-CAM give the same map up to the factor ``Z``, which normalisation
    removes (Selvaraju et al. 2017, Sec. 3.1).
    """

    name = "cam"
    needs_dense_head = True

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        return self.probe.head.kernel[:, classes].T


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1): ``w_k^c = 1/Z sum_ij dy_c / dA_ij^k``, the
    gradient global-average-pooled over space; the map is Eq. 2, ``ReLU(sum_k w_k^c A^k)``."""

    name = "gradcam"

    def channel_weights(self, features, grads, classes) -> np.ndarray:
        return np.asarray(grads).mean(axis=(1, 2))


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


METHODS: dict[str, type[BaseCAM]] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
}
ALIASES = {
    "grad-cam": "gradcam",
    "grad_cam": "gradcam",
    "gradcampp": "gradcam++",
    "gradcam_plus_plus": "gradcam++",
    "grad-cam++": "gradcam++",
}


def get_method(name: str) -> type[BaseCAM]:
    """The method class for ``name`` (case-insensitive, common spellings accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key]
