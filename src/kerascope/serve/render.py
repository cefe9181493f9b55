"""Pictures of an explanation for the web: the blended overlay and the heatmap layer alone.

The page stacks the heatmap layer (an RGBA PNG whose opacity is the heat) over the photo and
changes its CSS opacity with a slider, so moving the slider costs no request. Both are drawn
at most ``max_side`` pixels on the long side: a 12 MP phone photo needs no 12 MP overlay on
a screen, and the response stays small. A tiny photo is drawn enlarged and a thin one
stretched, as explain draws them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from kerascope.cam.enlarge import enlarge, enlargement
from kerascope.cam.overlay import colormap_lut, opacity_gain, opacity_levels, overlay
from kerascope.cam.save import OUTPUT_MIN_SIDE
from kerascope.cam.stretch import MIN_PICTURE_SIDE


def drawn_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The (width, height) `fit` draws a ``width`` x ``height`` picture at: enlarged when
    tiny, scaled down to ``max_side``, then a thin one's short side stretched to
    `kerascope.cam.stretch.MIN_PICTURE_SIDE` (never past its long side), as explain draws it:
    a 30000x20 panorama was a 1024x1 strip on the page."""
    factor = enlargement(width, height, OUTPUT_MIN_SIDE)
    width, height = width * factor, height * factor
    scale = max_side / max(height, width) if max_side else 1.0
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    short = min(MIN_PICTURE_SIDE, max(width, height))
    return max(width, short), max(height, short)


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` as drawn (`drawn_size`): one under explain's ``OUTPUT_MIN_SIDE`` enlarged by
    a whole factor as explain enlarges it (`kerascope.cam.enlarge`: a 1x1 photo's heatmap was
    1x1, which the page stretched to one flat colour), scaled down so its long side is at
    most ``max_side`` (0: as is), a thin one stretched."""
    image = enlarge(image, OUTPUT_MIN_SIDE)
    height, width = image.shape[:2]
    size = drawn_size(width, height, max_side)
    if size == (width, height):
        return image
    pil = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(pil)


def heat_layer(heatmap: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> Image.Image:
    """The coloured heatmap at ``size`` = (H, W) as RGBA, alpha = heat (0 where it is cold),
    stretched by the overlay's contrast rule (`kerascope.cam.overlay.opacity_gain`).

    Quantised and upsampled as `kerascope.cam.overlay.overlay` does, so the layer at opacity
    ``alpha`` over the photo is the overlay the API returns for that ``alpha``.
    """
    heat8 = (np.clip(np.nan_to_num(heatmap, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    level = Image.fromarray(heat8)
    height, width = size
    if heat8.shape != (height, width):
        level = level.resize((width, height), Image.Resampling.BILINEAR)
    levels = np.asarray(level)
    opacity = opacity_levels(1.0, opacity_gain(heat8))[levels]
    return Image.fromarray(np.dstack([colormap_lut(colormap)[levels], opacity]), "RGBA")


def render(
    image: np.ndarray, heatmap: np.ndarray, alpha: float, colormap: str, max_side: int
) -> tuple[np.ndarray, Image.Image]:
    """(overlay (h, w, 3) uint8, heatmap layer RGBA) for one image, ``max_side`` applied."""
    shown = fit(image, max_side)
    return overlay(shown, heatmap, alpha, colormap), heat_layer(heatmap, shown.shape[:2], colormap)
