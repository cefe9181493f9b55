"""The host executor of the augmentation: Pillow resamples each uint8 image at the affine map
:func:`kerascope.data.augment.sample_matrices` drew for it.

This is what the split trainer uses on a CPU: XLA's CPU resampling of a batch is slower than
the network's whole forward pass (the Keras ``Random*`` layers took ~8-10 s per batch of 32
224x224 images on the 2-core reference machine), while Pillow's C resampler, which releases the
GIL, takes milliseconds. The fill mode is reproduced by padding the image first (edge padding
is "nearest", symmetric is "reflect"), just enough for every pixel the map reads. The device
executor, :func:`kerascope.data.augment.warp`, reads the same matrices: same seed, same views.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from kerascope.data.augment import AugmentConfig, policy_plan, sample_matrices
from kerascope.data.policy import PolicyPlan

_PAD_MODES = {"nearest": "edge", "reflect": "symmetric", "wrap": "wrap", "constant": "constant"}

BatchAugmenter = Callable[[np.ndarray, int, int], np.ndarray]


def random_affine(config: AugmentConfig, seed: int) -> BatchAugmenter:
    """``f(images, epoch, batch)``: a uint8 (N, H, W, 3) batch, randomly transformed.

    Example:
        >>> augment = random_affine(AugmentConfig(), seed=0)
        >>> augment(np.zeros((4, 64, 64, 3), np.uint8), 0, 0).shape
        (4, 64, 64, 3)
    """

    def run(images: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        if config.is_identity:
            return images
        n, height, width = images.shape[:3]
        matrices = sample_matrices(config, seed, epoch, batch, n, height, width)
        out = warp_pillow(images, matrices, config.fill_mode)
        if config.policy:  # its colour operations (PIL's; the device runs apply_colour)
            out = colour_host(out, policy_plan(config, seed, epoch, batch, n, height, width))
        return out

    return run


def colour_host(images: np.ndarray, plan: PolicyPlan) -> np.ndarray:
    """A uint8 batch through the plan's colour operations, image by image with PIL's own
    (``ImageEnhance``, ``ImageOps``): milliseconds where evaluating every operation on the
    whole batch in ``keras.ops`` (the device executor, :func:`apply_colour`, which matches PIL
    within a grey level) took seconds per batch on a CPU."""
    out = images.copy()
    for i, (names, values) in enumerate(zip(plan.names, plan.values, strict=True)):
        picture = None
        for name, value in zip(names, values, strict=True):
            if name in _PIL_COLOUR:
                picture = Image.fromarray(out[i]) if picture is None else picture
                picture = _PIL_COLOUR[name](picture, float(value))
        if picture is not None:
            out[i] = np.asarray(picture)
    return out


_PIL_COLOUR = {
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "posterize": lambda im, v: ImageOps.posterize(im, int(v)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "equalize": lambda im, v: ImageOps.equalize(im),
}


def warp_pillow(images: np.ndarray, matrices: np.ndarray, fill_mode: str = "nearest") -> np.ndarray:
    """uint8 (N, H, W, C) images resampled bilinearly at ``matrices`` (N, 2, 3): output pixel
    index -> input pixel index, as :func:`kerascope.data.augment.sample_matrices` draws them."""
    return np.stack([_one(image, m, fill_mode) for image, m in zip(images, matrices, strict=True)])


def _one(image: np.ndarray, matrix: np.ndarray, fill_mode: str) -> np.ndarray:
    height, width = image.shape[:2]
    linear, offset = np.asarray(matrix[:, :2], float), np.asarray(matrix[:, 2], float)
    if np.array_equal(linear, np.eye(2)) and not offset.any():
        return np.ascontiguousarray(image)
    flipped = _flip(linear, offset, width, height)
    if flipped is not None:
        return np.ascontiguousarray(image[flipped])
    # pad just enough for every source pixel the output reads (the bilinear taps included)
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]])
    source = corners @ linear.T + offset
    low = np.maximum(0, np.ceil(-source.min(axis=0)) + 2).astype(int)
    high = np.maximum(0, np.ceil(source.max(axis=0) - [width - 1, height - 1]) + 2).astype(int)
    pads = ((low[1], high[1]), (low[0], high[0]), (0, 0))
    padded = np.pad(image, pads, mode=_PAD_MODES[fill_mode])
    offset = offset + low
    # Pillow samples pixel centres: it reads a.(x + .5) + c - .5 where the map says a.x + c
    offset = offset + 0.5 - 0.5 * linear.sum(axis=1)
    coefficients = (*linear[0], offset[0], *linear[1], offset[1])
    out = Image.fromarray(padded).transform(
        (width, height), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out)


def _flip(linear: np.ndarray, offset: np.ndarray, width: int, height: int) -> tuple | None:
    """The slicing of a pure mirror map (no resampling needed), or None for any other map."""
    if not np.array_equal(np.abs(linear), np.eye(2)):
        return None
    index: list = [slice(None), slice(None)]
    for axis, size, array_axis in ((0, width, 1), (1, height, 0)):
        if linear[axis, axis] < 0:
            if offset[axis] != size - 1:
                return None
            index[array_axis] = slice(None, None, -1)
        elif offset[axis] != 0:
            return None
    return tuple(index)
