"""A picture too thin to show its heatmap, stretched along its short side for drawing.

A 30000x20 panorama is drawn 4096 px wide (`cam.save.OUTPUT_MAX_SIDE`), so 3 px tall: its
picture was a label bar over a strip no eye could read (8192x23). Its short side is now
stretched to :data:`MIN_PICTURE_SIDE` (the long side kept): the heat along the panorama shows,
and the map, computed on the picture squeezed into the model's square input anyway, loses
nothing it had. A picture under 224 px on both sides is enlarged whole before this (it then
has no side under 112 unless its sides differ 2:1 or more).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_PICTURE_SIDE: int = 112
"""No side of the original or the overlay is drawn shorter (even, for H.264 video frames)."""


def stretched_size(width: int, height: int) -> tuple[int, int] | None:
    """The (width, height) a ``width`` x ``height`` picture is drawn at, or None to keep it."""
    if min(width, height) >= MIN_PICTURE_SIDE:
        return None
    return max(width, MIN_PICTURE_SIDE), max(height, MIN_PICTURE_SIDE)


def stretch_image(image: Image.Image) -> Image.Image:
    """``image`` with no side under :data:`MIN_PICTURE_SIDE` (bicubic; kept as is if none is)."""
    size = stretched_size(*image.size)
    return image if size is None else image.resize(size, Image.Resampling.BICUBIC)


def stretch_array(image: np.ndarray) -> np.ndarray:
    """`stretch_image` on an (H, W, 3) uint8 array, pixel for pixel the same."""
    if stretched_size(image.shape[1], image.shape[0]) is None:
        return image
    return np.asarray(stretch_image(Image.fromarray(np.ascontiguousarray(image))))
