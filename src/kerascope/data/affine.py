"""The augmentation of :class:`AugmentConfig` on uint8 batches in Pillow, for CPU training.

Keras's ``Random*`` layers are right on a GPU, inside the compiled model. On a CPU, XLA runs
their resampling very slowly: measured on the 2-core reference machine, the five layers of the
default config took ~8-10 s for a batch of 32 224x224 images, far more than the network's
forward pass. Here the same random transformations (flip, rotation, shift, shear, zoom, in
:class:`AugmentConfig`'s terms and ranges) are composed into one affine map per image and
applied once by Pillow's C resampler, with the fill mode reproduced by padding the image first
(edge padding is "nearest", symmetric is Keras's "reflect").

Draws come from ``(seed, epoch, batch)``, so every epoch sees new views and a resumed run sees
the ones an unbroken run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from kerascope.data.augment import AugmentConfig

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
        rng = np.random.default_rng([seed, epoch, batch])
        return np.stack([_one(image, config, rng) for image in images])

    return run


def _one(image: np.ndarray, c: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    if c.horizontal_flip and rng.random() < 0.5:
        image = image[:, ::-1]
    if c.vertical_flip and rng.random() < 0.5:
        image = image[::-1]
    angle = math.radians(rng.uniform(-c.rotation, c.rotation))
    shift_y = rng.uniform(-c.height_shift, c.height_shift) * height
    shift_x = rng.uniform(-c.width_shift, c.width_shift) * width
    shear = rng.uniform(-c.shear, c.shear)
    zoom_y, zoom_x = rng.uniform(1 - c.zoom, 1 + c.zoom, 2)
    # output pixel -> input pixel, about the centre: zoom . shear . rotation, then the shift
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, -sin], [sin, cos]])
    matrix = np.diag([zoom_x, zoom_y]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ rotate
    if not np.any(matrix - np.eye(2)) and shift_x == shift_y == 0:
        return np.ascontiguousarray(image)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    offset = centre - matrix @ centre - np.array([shift_x, shift_y])
    # pad just enough for every source pixel the output reads (the bilinear taps included)
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]])
    source = corners @ matrix.T + offset
    low = np.maximum(0, np.ceil(-source.min(axis=0)) + 2).astype(int)
    high = np.maximum(0, np.ceil(source.max(axis=0) - [width - 1, height - 1]) + 2).astype(int)
    pads = ((low[1], high[1]), (low[0], high[0]), (0, 0))
    padded = np.pad(image, pads, mode=_PAD_MODES[c.fill_mode])
    offset = offset + low
    coefficients = (*matrix[0], offset[0], *matrix[1], offset[1])
    out = Image.fromarray(padded).transform(
        (width, height), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out)
