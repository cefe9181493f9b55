"""A picture too small to read, drawn enlarged by a whole factor (each pixel a square block).

A 1x1 or 8x6 photo drawn as it is gives a label bar bigger than the picture, and on the web
page one flat colour stretched by the browser. Explain's pictures (`kerascope.cam.save`, its
``OUTPUT_MIN_SIDE``), video frames and the server's heatmaps are enlarged by the same rule:
the smallest whole factor that brings the long side to ``min_side``, nearest neighbour, so
every pixel of the photo stays a sharp block under its heat.
"""

from __future__ import annotations

import numpy as np


def enlargement(width: int, height: int, min_side: int) -> int:
    """The whole factor a ``width`` x ``height`` picture is drawn at: 1 when its long side
    reaches ``min_side``, else the smallest that brings it there."""
    long_side = max(width, height, 1)
    return 1 if long_side >= min_side else -(-min_side // long_side)


def enlarge(image: np.ndarray, min_side: int) -> np.ndarray:
    """``image`` (H, W[, C]) with every pixel repeated `enlargement` times each way (itself
    when that is 1)."""
    factor = enlargement(image.shape[1], image.shape[0], min_side)
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
