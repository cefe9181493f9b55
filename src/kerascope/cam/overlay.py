"""Turn a low-resolution heatmap into a picture a person can read: colour, blend, label, save.

Everything here is plain NumPy + Pillow and runs once per frame in ``kerascope video``, so the
hot path stays in uint8 inside Pillow's C code: the colormap is a 256-entry lookup table, the
blend is one ``Image.composite``, and label bars are rendered once per distinct text.

Contrast rule: a pixel's opacity follows its heat, stretched (`opacity_gain`) when a map's
evidence is faint nearly everywhere (LayerCAM at an early layer), so the hottest part of any
non-empty map shows; the colour is always the map's value, so the colour bar reads true. That
value is relative: each map is divided by its own maximum, so its key runs from 0 to "this
map's max", not to an absolute heat shared between pictures.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kerascope.cam.stretch import stretch_array, stretch_image
from kerascope.cam.text import fit_bar
from kerascope.cam.wording import shorter
from kerascope.files import atomic_open
from kerascope.fonts import pillow_font

# Piecewise-linear colormaps as (x, value) breakpoints per channel, matplotlib's definitions
# (matplotlib/_cm.py), so results look like the tutorials people compare against without
# depending on matplotlib. Any other name is looked up in matplotlib if it is installed.
_SEGMENTS: dict[str, tuple[list[tuple[float, float]], ...]] = {
    "jet": (
        [(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
        [(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)],
        [(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
    ),
    "hot": (
        [(0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)],
        [(0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)],
        [(0.0, 0.0), (0.746032, 0.0), (1.0, 1.0)],
    ),
    "gray": ([(0.0, 0.0), (1.0, 1.0)],) * 3,
}
# Perceptually uniform maps as RGB control points evenly spaced over [0, 1], interpolated to
# 256 entries: matplotlib's viridis (van der Walt & Smith, CC0; matplotlib/_cm_listed.py)
# sampled at 33 points, within 3/255 of its 256-entry table.
_LISTED: dict[str, str] = {
    "viridis": """
        440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d
        2f6b8e 2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a
        3fbc73 4ec36b 5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725
    """,
}
DEFAULT_COLORMAP = "viridis"
"""Measured the most visible where the heat is highest, on every test photo and on darkened
ones (``benchmarks/colormap_contrast.py``: mean CIE Lab ΔE between overlay and photo where the
heat is >= 0.9, at alpha 0.4: viridis 43, jet 36, inferno 34, turbo 28), and its visibility
rises with the heat; jet ends in dark red, which nearly vanishes on red/brown and dark photos
exactly where the model looked most, and its bright yellow-green band draws the eye to middling
heat instead."""
COLORMAPS: tuple[str, ...] = (DEFAULT_COLORMAP, *_SEGMENTS)
"""Colormaps available without matplotlib, the default first."""


@functools.lru_cache(maxsize=16)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The (256, 3) uint8 lookup table for ``name``; built once, then shared.

    Raises:
        ValueError: unknown name (and matplotlib, which knows more, is not installed).
    """
    x = np.linspace(0.0, 1.0, 256)
    if name in _SEGMENTS:
        channels = [np.interp(x, *zip(*segs, strict=True)) for segs in _SEGMENTS[name]]
        lut = np.stack(channels, axis=1)
    elif name in _LISTED:
        points = np.array([list(bytes.fromhex(h)) for h in _LISTED[name].split()], float)
        at = np.linspace(0.0, 1.0, len(points))
        lut = np.stack([np.interp(x, at, points[:, c]) for c in range(3)], axis=1) / 255.0
    else:
        try:
            import matplotlib

            lut = matplotlib.colormaps[name](x)[:, :3]
        except ImportError:
            raise ValueError(
                f"unknown colormap {name!r}: built in are {', '.join(COLORMAPS)} "
                "(install matplotlib for the others)"
            ) from None
        except KeyError:
            raise ValueError(f"unknown colormap {name!r}") from None
    lut = np.round(lut * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w) map to ``size`` = (H, W) with bilinear interpolation, clipped to [0, 1].

    Bilinear on pixel centres (Pillow's "F" mode) keeps a hot cell centred where it was and
    gives the smooth blobs people expect, without the ringing of bicubic.
    """
    a = np.ascontiguousarray(heatmap, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {a.shape}")
    height, width = (int(s) for s in size)
    if a.shape != (height, width):
        a = np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0, dtype=np.float32)


PLACED_SIDE = 256
"""Long side of a heatmap placed in its picture, at least: a map finer than that (a pixel method's
224 x 224) keeps its own resolution inside the box (a 256 px grid over an 800 x 300 picture
squeezed it to 84 x 84 inside the crop, losing half its hot pixels)."""


def place_in_picture(
    heatmap: np.ndarray, shape: tuple[int, ...], box: tuple[float, float, float, float]
) -> np.ndarray:
    """A map over the whole (height, width) picture, ``heatmap`` inside ``box`` and 0 outside.

    Classification may show the model only the centre of a picture (``images.fit_box``); the
    heatmap explains that part, so it is drawn there and the rest stays the plain photo. The
    result has the picture's aspect ratio, at most its size, :data:`PLACED_SIDE` pixels a side
    or enough that the map keeps its own resolution inside ``box``.
    """
    height, width = (int(s) for s in shape[:2])
    if box == (0.0, 0.0, float(width), float(height)):
        if np.asarray(heatmap).dtype == np.uint8:  # levels: drawn as they are
            return np.asarray(heatmap)
        return np.asarray(heatmap, dtype=np.float32)
    heatmap = as_heat(heatmap)
    box_w, box_h = max(box[2] - box[0], 1e-9), max(box[3] - box[1], 1e-9)
    own = max(heatmap.shape[0] / box_h, heatmap.shape[1] / box_w)  # the map's cells, 1:1
    scale = min(1.0, max(PLACED_SIDE / max(height, width), own))
    grid_h, grid_w = max(1, round(height * scale)), max(1, round(width * scale))
    left, top, right, bottom = (round(v * scale) for v in box)
    placed = np.zeros((grid_h, grid_w), np.float32)
    if right > left and bottom > top:
        placed[top:bottom, left:right] = upsample(heatmap, (bottom - top, right - left))
    return placed


def to_levels(heatmap: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as the uint8 heat levels pictures are drawn in, ``round(255 * v)``: one
    per colormap entry, so nothing that shows is lost (the device path computes the same
    levels there). Numbers (scores, comparisons) keep float maps."""
    a = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def as_heat(heatmap: np.ndarray) -> np.ndarray:
    """A map as float32 in [0, 1], whether it came as uint8 levels (`to_levels`) or floats."""
    a = np.asarray(heatmap)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Map values in [0, 1] to RGB through a 256-entry table: (H, W) -> (H, W, 3) uint8."""
    a = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    index = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return colormap_lut(colormap)[index]


CONTRAST_LEVEL = 0.75
"""The contrast rule: the hottest 5 % of a map's evidence (its 95th percentile of the values
above 0) is drawn at least at this fraction of full opacity. Grad-CAM's maps already are
(the 95th percentile is ~0.8 on the test photos: drawn as they are); an early layer's
LayerCAM map, 99 % of it below 0.21, is not, and would look like the plain photo."""
MAX_GAIN = 8.0
"""The most the opacity of a map is stretched, so that a map whose evidence is all faint
noise around one peak does not tint the whole picture."""


def opacity_gain(heat8: np.ndarray) -> float:
    """How much the opacity of this map (8-bit heat levels) is stretched: the contrast rule.

    Opacity is ``alpha * min(1, gain * heat)`` while the colour stays ``colormap(heat)``, so
    the colour bar still tells the true heat and a cold (0) pixel stays the plain photo. The
    gain is ``CONTRAST_LEVEL / p95`` (p95: the 95th percentile of the levels above 0), at
    least 1 and at most `MAX_GAIN`; and at least ``CONTRAST_LEVEL / max``, so the peak of any
    non-empty map (one not normalised to 1 too) shows whatever the cap. A histogram of 256
    bins, not a sort: one pass over the map, cheap per video frame.
    """
    return _gain(Image.fromarray(np.ascontiguousarray(heat8, np.uint8)).histogram())


def _gain(histogram: list[int]) -> float:
    """`opacity_gain` from the map's 256-bin histogram (Pillow's, in C: half of
    ``np.bincount``'s time, which first widens every level to 64 bits)."""
    counts = np.asarray(histogram[1:], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:  # empty: nothing to stretch
        return 1.0
    p95 = int(np.searchsorted(np.cumsum(counts), 0.95 * total)) + 1  # a level in 1..255
    peak = int(np.flatnonzero(counts)[-1]) + 1
    gain = min(MAX_GAIN, max(1.0, CONTRAST_LEVEL * 255.0 / p95))
    return max(gain, CONTRAST_LEVEL * 255.0 / peak)


def opacity_levels(alpha: float, gain: float = 1.0) -> np.ndarray:
    """The opacity (0-255) of each 8-bit heat level: ``round(alpha * min(255, gain * v))``;
    with ``gain`` 1, ``round(alpha * v)`` exactly, as the blend was first written."""
    levels = np.minimum(np.arange(256, dtype=np.float64) * gain, 255.0) * alpha
    return np.round(levels).astype(np.uint8)


def _overlay_palette(colormap: str, alpha: float, gain: float) -> bytes:
    """Each heat level's colour and, as its alpha, its opacity: an RGBA palette (256 entries
    in NumPy, microseconds, so not cached: the gain differs from map to map)."""
    opacity = opacity_levels(alpha, gain)[:, None]
    return np.concatenate([colormap_lut(colormap), opacity], axis=1).tobytes()


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """Blend the coloured heatmap over ``image``, more strongly where the map is hot.

    Each pixel's opacity is ``alpha * heat``: where the model did not look (heat 0) the photo
    is untouched, and at the peak it is ``alpha`` colour. A uniform blend (the classic Keras
    tutorial) tints the whole picture blue and hides the photo that is being explained. A map
    whose evidence is faint nearly everywhere (an early layer) has its opacity stretched by the
    contrast rule (`opacity_gain`), so its hottest part shows; the colour keeps the true heat.

    The map is quantised to 8 bits *before* upsampling so that the resize, the colour lookup
    and the blend all run in Pillow's C code on uint8: 2-3x faster than NumPy on a 720p frame,
    and the 1/255 steps are invisible under a smooth bilinear ramp.

    Args:
        image: (H, W, 3) uint8 RGB.
        heatmap: (h, w) in [0, 1] at any resolution; upsampled to (H, W).
        alpha: opacity at heat 1 (before the contrast rule), in [0, 1].
        colormap: a name from :data:`COLORMAPS` (or matplotlib's, if installed).

    Returns:
        (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    blended = overlay_image(Image.fromarray(np.ascontiguousarray(image)), heatmap, alpha, colormap)
    return np.asarray(blended, dtype=np.uint8)


def overlay_image(
    image: Image.Image, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = DEFAULT_COLORMAP
) -> Image.Image:
    """`overlay` on a Pillow image, returning an RGB one: what explain's picture threads use, so a
    picture is drawn without NumPy copies (Pillow's C code runs outside the GIL)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.asarray(heatmap)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heat.shape}")
    width, height = image.size
    # uint8 levels (`to_levels`, as the device path sends them) are drawn as they are.
    heat8 = np.ascontiguousarray(heat if heat.dtype == np.uint8 else to_levels(heat))
    level = Image.fromarray(heat8)
    gain = _gain(level.histogram())  # `opacity_gain`, on the map as it came
    if heat8.shape != (height, width):
        level = level.resize((width, height), Image.Resampling.BILINEAR)
    # The heat levels as palette indices (L -> P keeps the values): colour and opacity are
    # then one RGBA palette lookup in C, pasted with its own alpha as the mask (what
    # Image.composite does, without a separate L mask: 0.4 ms less per 500x375 picture).
    # Image.point would round its 256-entry table in Python on every call, under the GIL.
    indexed = level.convert("P")
    indexed.putpalette(_overlay_palette(colormap, float(alpha), gain), "RGBA")
    tinted = indexed.convert("RGBA")
    blended = image.copy() if image.mode == "RGB" else image.convert("RGB")
    blended.paste(tinted, (0, 0), tinted)
    return blended


def _font(size: int, text: str = "") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font with every glyph of ``text`` at ``size`` px (`kerascope.fonts`): Pillow's bundled
    one for ASCII, else an installed one that has them (class names in Chinese drew as boxes)."""
    return pillow_font(size, text)


def bar_height(image_height: int) -> int:
    """Label-bar height for an image: ~7% of it, at least 20 px, always even (for H.264)."""
    h = max(20, round(image_height * 0.07))
    return h + (h % 2)


_CACHED_BAR_BYTES = 1 << 20


def _label_bar(label: str, width: int, height: int) -> np.ndarray:
    """White text on black, vertically centred. Bars up to 1 MB (video frames, whose labels
    repeat) are cached; explain's labels are all different and a 4096 px picture's bar is 7 MB,
    so caching those made memory grow with the number of images."""
    if width * height * 3 <= _CACHED_BAR_BYTES:
        return _cached_bar(label, width, height)
    return _draw_bar(label, width, height)


@functools.lru_cache(maxsize=256)
def _cached_bar(label: str, width: int, height: int) -> np.ndarray:
    return _draw_bar(label, width, height)


def _draw_bar(label: str, width: int, height: int) -> np.ndarray:
    bar = Image.new("RGB", (width, height), (0, 0, 0))
    _write_label(ImageDraw.Draw(bar), label, width, height)
    out = np.asarray(bar, dtype=np.uint8)
    out.setflags(write=False)
    return out


def _write_label(draw: ImageDraw.ImageDraw, label: str, width: int, height: int) -> None:
    """White ``label`` vertically centred in the top ``height`` rows, shrunk or wrapped to
    ``width`` (`kerascope.cam.text.fit_bar`): never cut at the edge; in its shorter wording
    where that reads larger (`kerascope.cam.wording.shorter`)."""
    pad = max(4, height // 4)
    font, lines = fit_bar(label, width, height, pad, shorter(label))
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=0)
    y = (height - (bottom - top)) // 2 - top
    draw.multiline_text((pad, y), text, fill=(255, 255, 255), font=font, spacing=0)


EMPTY_NOTICE = "empty map: no evidence for this class"
"""Added to the label of a map with nothing to draw, so a plain photo is not taken for a bug."""


def is_empty(heatmap: np.ndarray) -> bool:
    """True when nothing of the map would show: no value reaches the first 8-bit heat level.

    Grad-CAM's ReLU zeroes a map with no positive evidence for the class (typically a class the
    model gives ~0 %); the overlay is then the untouched photo, which needs saying.
    """
    if np.asarray(heatmap).dtype == np.uint8:  # levels: level 1 is the first that shows
        return not bool(np.asarray(heatmap).any())
    a = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    return not bool((a >= 0.5 / 255.0).any())


def mark_empty(label: str, heatmap: np.ndarray) -> str:
    """``label``, plus :data:`EMPTY_NOTICE` when the map is empty (see `is_empty`)."""
    return f"{label} - {EMPTY_NOTICE}" if is_empty(heatmap) else label


KEY_WORDS = (("0", "this map's max"), ("0", "max"))
"""The colour key's ends, longest first: every map is scaled to its own maximum, so its top
colour is that map's maximum, not a heat comparable between pictures ("high" read as one)."""


def colorbar(width: int, height: int, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """A horizontal key for the overlay: ``0`` [colormap from 0 to 1] ``this map's max``
    (`KEY_WORDS`; ``max`` where that does not fit), white text on black, (height, width, 3)
    uint8. Narrower than the words allow, it is the gradient alone. Read-only; small keys
    (video frames) are drawn once per size and shared."""
    if width * height * 3 <= _CACHED_BAR_BYTES:
        return _cached_colorbar(int(width), int(height), colormap)
    return _draw_colorbar(int(width), int(height), colormap)


@functools.lru_cache(maxsize=32)
def _cached_colorbar(width: int, height: int, colormap: str) -> np.ndarray:
    return _draw_colorbar(width, height, colormap)


def _draw_colorbar(width: int, height: int, colormap: str) -> np.ndarray:
    bar = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(bar)
    font = _font(max(8, round(height * 0.68)))
    pad = max(2, height // 4)
    for words in KEY_WORDS:
        low, high = (draw.textbbox((0, 0), w, font=font) for w in words)
        left, right = pad + low[2] - low[0] + pad, width - pad - (high[2] - high[0]) - pad
        if right - left >= max(16, width // 4):
            break
    if right - left < max(16, width // 4):  # no room for words: the gradient alone
        left, right = 0, width
    else:
        for word, box, x in ((words[0], low, pad), (words[1], high, right + pad)):
            y = (height - (box[3] - box[1])) // 2 - box[1]
            draw.text((x - box[0], y), word, fill=(255, 255, 255), font=font)
    out = np.array(bar, dtype=np.uint8)
    steps = np.linspace(0.0, 255.0, max(1, right - left)).round().astype(np.intp)
    top, bottom = (pad // 2, height - pad // 2) if height > 2 * pad else (0, height)
    out[top:bottom, left:right] = colormap_lut(colormap)[steps]
    out.setflags(write=False)
    return out


def side_by_side(
    image: np.ndarray,
    overlaid: np.ndarray,
    label: str,
    colorbar: bool = False,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Original left, overlay right, with ``label`` (e.g. "tabby 87.3%") in a bar on top.

    The layout of the seed's ``dog-output.jpg``: the unmodified photo next to the heatmap,
    so the eye can check what is under the hot region. With ``colorbar``, a key of
    ``colormap`` (the one the overlay was drawn with) from 0 to the map's own maximum runs
    under the overlay, in a strip as tall as the label bar.

    Returns: (bar_height(H) + H, 2 * W, 3) uint8 (2 * bar_height(H) + H with colorbar), H, W
    stretched to at least `cam.stretch.MIN_PICTURE_SIDE`."""
    if image.shape != overlaid.shape:
        raise ValueError(f"image {image.shape} and overlay {overlaid.shape} differ in shape")
    image, overlaid = stretch_array(image), stretch_array(overlaid)  # a panorama: `cam.stretch`
    height, width = image.shape[:2]
    bar = bar_height(height)
    key = bar if colorbar else 0
    out = np.zeros((bar + height + key, 2 * width, 3), dtype=np.uint8)
    out[:bar] = _label_bar(label, 2 * width, bar)
    out[bar : bar + height, :width] = image
    out[bar : bar + height, width:] = overlaid
    if colorbar:
        out[bar + height :, width:] = _colorbar_fn(width, key, colormap)
    return out


_colorbar_fn = colorbar  # `side_by_side` and `label_frame` name their flag ``colorbar``


def side_by_side_image(
    image: Image.Image,
    overlaid: Image.Image,
    label: str,
    colorbar: bool = False,
    colormap: str = DEFAULT_COLORMAP,
) -> Image.Image:
    """`side_by_side` on Pillow images, pixel for pixel the same picture, drawn without NumPy:
    the label is written straight onto the canvas (its bar is the canvas's black top rows, the
    photos pasted after it clip the text as the bar's edge does)."""
    if image.size != overlaid.size:
        raise ValueError(f"image {image.size} and overlay {overlaid.size} differ in size")
    image, overlaid = stretch_image(image), stretch_image(overlaid)
    width, height = image.size
    bar = bar_height(height)
    key = bar if colorbar else 0
    canvas = Image.new("RGB", (2 * width, bar + height + key), (0, 0, 0))
    if 2 * width * bar * 3 <= _CACHED_BAR_BYTES:  # small: the cached bar, as side_by_side
        canvas.paste(Image.fromarray(_cached_bar(label, 2 * width, bar)), (0, 0))
    else:
        _write_label(ImageDraw.Draw(canvas), label, 2 * width, bar)
    canvas.paste(image, (0, bar))
    canvas.paste(overlaid, (width, bar))
    if colorbar:
        canvas.paste(Image.fromarray(_colorbar_fn(width, key, colormap)), (width, bar + height))
    return canvas


def label_frame(
    overlaid: np.ndarray, label: str, colorbar: bool = False, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """Write ``label`` in the top-left corner of the image itself, on a darkened strip.

    For the overlay layout, where the output keeps the input's size. With ``colorbar``, a key
    of ``colormap`` a third of the width wide sits in the bottom-right corner. Returns a new
    array.
    """
    out = np.array(overlaid, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    bar = min(bar_height(height), height)
    text = _label_bar(label, width, bar)
    # Only as wide as the text (plus padding), so the picture stays visible beside it.
    columns = np.flatnonzero(text.max(axis=(0, 2)))
    right = min(width, int(columns[-1]) + 1 + bar // 4) if columns.size else 0
    region = out[:bar, :right]
    region >>= 1  # darken to half so white text reads on any background
    np.maximum(region, text[:, :right], out=region)
    if colorbar and width >= 3:
        out[height - bar :, width - width // 3 :] = _colorbar_fn(width // 3, bar, colormap)
    return out


def picture_format(path: str | os.PathLike) -> str:
    """Pillow's format for a picture named ``path``: JPEG or PNG by its suffix."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"save writes .jpg, .jpeg or .png pictures, got '{path}'")
    return fmt


def save_jpeg(
    array: np.ndarray | Image.Image, path: str | os.PathLike, quality: int = 90, fmt: str = "JPEG"
) -> None:
    """Write an RGB array (or Pillow image) as JPEG (or ``fmt``: PNG) atomically
    (`kerascope.files.atomic_open`: temp file beside it, fsync, rename). An interrupted run or
    a full disk never leaves a half-written file under ``path``; a failed write raises
    `kerascope.files.OutputError`.
    """
    if isinstance(array, Image.Image):
        image = array
    else:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    with atomic_open(path, "wb") as fh:
        image.save(fh, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
