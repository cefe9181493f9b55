"""The two smoothing options of pytorch-grad-cam, on NumPy: ``eigen_smooth`` and ``aug_smooth``.

* ``eigen_smooth``: replace the sum over channels by the first principal component of the
  (weighted) activations, which keeps the dominant spatial pattern and drops noise
  (Muhammad & Yeasin 2020, the projection pytorch-grad-cam's ``get_2d_projection`` computes).
* ``aug_smooth``: test-time augmentation (pytorch-grad-cam's default ``ttach`` set: horizontal
  flip x intensity factors 0.9, 1, 1.1): a map per augmented input, each brought back to the
  original geometry and normalised, then averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FLIPS = (False, True)
FACTORS = (0.9, 1.0, 1.1)  # ttach.Multiply, applied to the normalised input as pytorch-grad-cam


def first_component(activations: np.ndarray) -> np.ndarray:
    """(N, h, w, K) -> (N, h, w): projection on the first principal direction over channels.

    Each position is a sample of K values; after centring per channel, the first right
    singular vector ``v`` of the (h*w, K) matrix is the direction of largest variance and
    ``X v`` the map. The sign of a singular vector is arbitrary, so it is chosen to make the
    larger-magnitude extreme positive (the sign correction of pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction``): ReLU then keeps the salient side.
    """
    n, h, w, k = activations.shape
    x = np.nan_to_num(activations.reshape(n, h * w, k).astype(np.float64))
    x -= x.mean(axis=1, keepdims=True)
    # The top eigenvector of the smaller Gram matrix instead of a full SVD (same vector, up to
    # sign; 50x faster for 7x7x1280): X v1 = s1 u1 with u1 the top eigenvector of X X^T.
    if h * w <= k:
        values, vectors = np.linalg.eigh(x @ x.transpose(0, 2, 1))  # (N, hw, hw), ascending
        projection = vectors[:, :, -1] * np.sqrt(np.maximum(values[:, -1:], 0.0))
    else:
        _, vectors = np.linalg.eigh(x.transpose(0, 2, 1) @ x)  # (N, K, K)
        projection = np.einsum("npk,nk->np", x, vectors[:, :, -1])
    flip = np.abs(projection.min(axis=1)) > np.abs(projection.max(axis=1))
    projection[flip] *= -1.0
    return projection.reshape(n, h, w).astype(np.float32)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each non-negative map to peak 1; a map with no positive evidence stays 0."""
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def augmented_maps(
    raw_maps: Callable[[np.ndarray, np.ndarray], tuple],
    pixels: np.ndarray,
    targets: np.ndarray,
    neutral: np.ndarray,
) -> tuple:
    """``raw_maps`` averaged over flips x intensity factors, in one batch.

    The class is fixed by the plain image (top-1 unless given) so every augmented copy
    explains the same class; pytorch-grad-cam re-picks the top-1 per copy, which can mix
    classes when the prediction is close. Intensity factors scale the input about ``neutral``,
    the pixel the model's preprocessing maps to zero (so ``x * f`` in the normalised input).

    Returns:
        (mean of the peak-normalised maps (N, h, w), classes (N,), probabilities (N,)), the
        classes and probabilities those of the plain image.
    """
    x = pixels.astype(np.float32)
    copies = []
    for flip in FLIPS:
        base = x[:, :, ::-1] if flip else x
        for factor in FACTORS:
            copies.append(base if factor == 1.0 else neutral + (base - neutral) * factor)
    plain = FLIPS.index(False) * len(FACTORS) + FACTORS.index(1.0)
    n = len(pixels)
    first, classes, probs = raw_maps(copies[plain], targets)  # fixes the classes
    rest = [c for i, c in enumerate(copies) if i != plain]
    maps, _, _ = raw_maps(np.concatenate(rest), np.tile(classes, len(rest)))
    maps = list(np.split(maps, len(rest)))
    maps.insert(plain, first)
    total = np.zeros_like(first)
    for i, m in enumerate(maps):
        flipped = FLIPS[i // len(FACTORS)]
        total += normalise(m[:, :, ::-1] if flipped else m)
    return total / len(maps), classes[:n], probs[:n]
