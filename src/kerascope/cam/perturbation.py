"""Forward passes on perturbed copies, for the gradient-free methods (Score-CAM, Ablation-CAM).

Both need one class score per channel per image: K copies of each image (masked inputs for
Score-CAM, activations with one channel zeroed for Ablation-CAM) run in batches through the
inference engine (onnxruntime on CPU, `kerascope.inference.compiled`), never one by one.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

CHUNK = 64  # copies per forward pass: 64 x 224 x 224 x 3 float32 is 38 MB


def neutral_pixel(model: Any) -> np.ndarray:
    """The RGB value the model's in-graph preprocessing maps to 0: the "no signal" input.

    Masking or scaling the *normalised* input, as pytorch-grad-cam does on its tensors, is
    masking towards this value in 0..255 pixels (mid-grey for most models, not black).
    Recognises a leading ``Rescaling`` and kerascope's ``ImagePreprocess`` (whose modes
    `kerascope.zoo.preprocess.neutral_rgb` knows); else 0.
    """
    import keras

    from kerascope.cam.graph import _walk

    for op, _ in _walk(model):
        if isinstance(op, keras.layers.InputLayer):
            continue
        if isinstance(op, keras.layers.Rescaling):
            scale = np.broadcast_to(np.asarray(op.scale, np.float32), (3,))
            offset = np.broadcast_to(np.asarray(op.offset, np.float32), (3,))
            return (-offset / scale).astype(np.float32)
        if type(op).__name__ == "ImagePreprocess":
            from kerascope.zoo.preprocess import neutral_rgb

            return neutral_rgb(op.mode)
        break
    return np.zeros(3, np.float32)


@functools.lru_cache(maxsize=8)
def _interpolation(out: int, size: int) -> np.ndarray:
    """(out, size) bilinear weights with aligned corners (torch's ``UpsamplingBilinear2d``)."""
    pos = np.linspace(0.0, size - 1.0, out) if out > 1 else np.zeros(1)
    low = np.clip(np.floor(pos).astype(int), 0, max(size - 2, 0))
    frac = pos - low
    m = np.zeros((out, size), np.float32)
    m[np.arange(out), low] += 1.0 - frac
    m[np.arange(out), np.minimum(low + 1, size - 1)] += frac
    return m


def upsampled_masks(features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, K) activations of one image -> (K, H, W) masks in [0, 1]: each channel
    upsampled bilinearly to the input and min-max normalised (Score-CAM, Eq. 3-4)."""
    rows = _interpolation(size[0], features.shape[0])
    cols = _interpolation(size[1], features.shape[1])
    up = rows @ np.moveaxis(features.astype(np.float32), -1, 0) @ cols.T  # (K, H, W)
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return ((up - low) / (high - low + 1e-8)).astype(np.float32)


def masked_scores(
    scores, pixels: np.ndarray, features: np.ndarray, classes: np.ndarray, neutral: np.ndarray
) -> np.ndarray:
    """(N, K) class logits of each image masked by each of its K upsampled activation maps.

    ``scores(batch) -> (M, classes)`` logits. Channels whose map is constant give the same
    all-neutral input (mask 0 everywhere), so that input runs once per image, not per channel.
    """
    n, _, _, k = features.shape
    out = np.empty((n, k), np.float32)
    for i in range(n):
        x = pixels[i].astype(np.float32) - neutral
        flat = features[i].reshape(-1, k)
        varies = np.flatnonzero(flat.max(0) > flat.min(0))
        if varies.size < k:
            blank = scores(np.broadcast_to(neutral, (1, *x.shape)).astype(np.float32))
            out[i] = blank[0, classes[i]]
        for start in range(0, varies.size, CHUNK):
            chosen = varies[start : start + CHUNK]
            masks = upsampled_masks(features[i][..., chosen], x.shape[:2])
            batch = masks[..., None] * x
            batch += neutral
            out[i, chosen] = scores(batch)[:, classes[i]]
    return out


def ablated_scores(tail, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(N, K) class logits with channel k of the target layer zeroed (Ablation-CAM, Sec. 3).

    ``tail(i, activations) -> (M, classes)`` logits runs the network after the target layer
    for image ``i``. Chunks of copies of one image's activations, one channel zeroed in each,
    run together.
    """
    n, _, _, k = features.shape
    out = np.empty((n, k), np.float32)
    for i in range(n):
        for start in range(0, k, CHUNK):
            chosen = np.arange(start, min(k, start + CHUNK))
            copies = np.repeat(features[i][None], len(chosen), axis=0)
            copies[np.arange(len(chosen)), ..., chosen] = 0.0
            out[i, chosen] = tail(i, copies)[:, classes[i]]
    return out
