"""Sizes: resize an RGB array, fit it to a model's input under its convention, and the box
of the picture that fitting keeps (`fit_box`, for heatmaps placed back on the photo)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from kerascope.images.colour import as_rgb_array


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = (height, width) with antialiased bilinear filtering.

    Pillow's bilinear filter widens with the scale factor, so downscaling a 12 MP photo
    to 224 px averages every pixel instead of aliasing. ``reducing_gap=3.0`` first shrinks
    by an integer factor (box filter) while the image is over 3x the target; Pillow
    documents the result as indistinguishable from the full filter, and it is much faster.

    Returns:
        uint8 array of shape (size[0], size[1], 3).
    """
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive (height, width), got {size}")
    a = as_rgb_array(image)
    if a.shape[:2] == (height, width):
        return a.copy()
    pil = Image.fromarray(a, "RGB")
    out = pil.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def fit(image: np.ndarray, size: tuple[int, int], convention: Any = None) -> np.ndarray:
    """Fit a picture to a model's input ``size`` = (height, width) under the weights' convention.

    ``convention`` is a `kerascope.zoo.registry.InputConvention` (``None``: squash).
    ``squash`` is :func:`resize`: the whole picture, aspect ratio not kept (what kerascope's
    training does, and what heatmaps need to cover the whole picture). ``crop`` is how
    published ImageNet figures are measured: scale so the shorter side becomes
    ``size / crop_fraction`` (e.g. 256 for 224 at 0.875), then cut the centre. It is done in
    one resampling step, Pillow resizing just the source box that becomes the crop, antialiased
    like :func:`resize`; with the convention's ``interpolation`` (bilinear unless it says
    ``bicubic``, the filter the EfficientNet references evaluate with).

    Returns:
        uint8 array of shape (size[0], size[1], 3).
    """
    mode = getattr(convention, "resize", "squash")
    interpolation = getattr(convention, "interpolation", "bilinear")
    if mode not in ("squash", "crop"):
        raise ValueError(f"unknown resize mode {mode!r}; use 'squash' or 'crop'")
    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use {' or '.join(_FILTERS)}")
    if mode == "squash" and interpolation == "bilinear":
        return resize(image, size)
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive (height, width), got {size}")
    a = as_rgb_array(image)
    box = fit_box(a.shape[:2], size, convention)
    pil = Image.fromarray(a, "RGB")
    out = pil.resize((width, height), _FILTERS[interpolation], box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


def fit_box(
    shape: tuple[int, ...], size: tuple[int, int], convention: Any = None
) -> tuple[float, float, float, float]:
    """The part of a (height, width) picture that `fit` shows the model: (left, top, right,
    bottom) in its pixels; the whole picture unless the convention crops.

    A heatmap computed on the fitted input belongs to this box (`cam.overlay.place_in_picture`).
    """
    src_h, src_w = (int(s) for s in shape[:2])
    box = (0.0, 0.0, float(src_w), float(src_h))
    if getattr(convention, "resize", "squash") != "crop":
        return box
    fraction = float(getattr(convention, "crop_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {fraction}")
    height, width = (int(s) for s in size)
    scale = max(height / fraction / src_h, width / fraction / src_w)  # covers size / fraction
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2.0, (src_h - box_h) / 2.0  # its centre is kept
    return (max(0.0, left), max(0.0, top), min(src_w, left + box_w), min(src_h, top + box_h))
