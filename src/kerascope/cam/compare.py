"""Every CAM method on one image: one grid picture (each method's overlay with its faithfulness
numbers under it) and a ranking by one metric.

Which method to trust for a model is an empirical question: the maps look alike, their
faithfulness does not (Rong et al. 2022). All methods explain the same class (the image's top-1
unless a target is given), on the same pixels, scored by the same metric. A method that cannot
run on the model (CAM needs a GlobalAveragePooling2D -> Dense head) is skipped with its reason.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kerascope.cam.faithfulness import (
    DEFAULT_STEPS,
    METRICS,
    Faithfulness,
    check_metrics,
    score_pixels,
)
from kerascope.fonts import pillow_font
from kerascope.output import percent

DEFAULT_METRIC = "road_morf"
"""Ranking metric: ROAD's most-relevant-first sweep. Deletion with a constant fill draws the
removed region's outline for the model to see, so its rankings disagree with the reverse
(LeRF) order; ROAD's imputation closes that leak and ranks consistently (Rong et al. 2022,
Sec. 3-5). It costs nine sparse solves per method (`benchmarks/explain.py`); ``deletion`` is
the fast choice."""
CHEAP_METRICS = ("deletion", "insertion", "drop")
"""Always shown in the grid: together a few dozen forward passes per method."""
PANEL_SIDE = 320
"""Longest side of each method's overlay in the grid, in pixels."""
MIN_PANEL_WIDTH = 160
"""Narrowest panel: a tall, thin picture is centred in one this wide, so its title and numbers
wrap into readable lines instead of one word (or letter) per line."""
_TITLE_SIZE, _SCORE_SIZE, _HEADER_SIZE, _CAPTION_SIZE = 18, 13, 16, 13
_SMALLEST = 10  # px: a title shrinks no further; a word still too wide is broken
_GAP, _TITLE, _LINE, _HEADER = 10, 26, 18, 30
_BACKGROUND, _TEXT, _DIM, _HIGHLIGHT = (24, 24, 24), (255, 255, 255), (170, 170, 170), (255, 214, 0)


@dataclass
class MethodScore:
    """One method on the image: its numbers, or why it could not run there."""

    method: str
    cost: str = ""
    sanity: bool = True  # passes the weight-randomisation check (Adebayo et al. 2018)
    faithfulness: Faithfulness | None = None
    skipped: str | None = None
    empty: bool = False  # the map has no positive evidence at all (every pixel ties)
    seconds: float = 0.0  # explaining the image (scoring not included)

    @property
    def ok(self) -> bool:
        return self.skipped is None


@dataclass
class Comparison:
    """Every method's scores for one image and class, and the grid picture written."""

    source: str
    class_index: int
    class_name: str
    probability: float
    metric: str
    methods: list[MethodScore]  # in `METHODS` order, skipped ones included
    path: Path | None = None
    fit: str = "whole"  # what the model saw of the picture (`kerascope.cam.fitting`)
    box: tuple[float, float, float, float] | None = None  # that part (`cam.fitting.Box`)
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Each method's map as the model computed it (what its numbers score)."""
    panels: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    """Each drawn method and its overlay's box (left, top, right, bottom) in the picture."""

    def ranking(self) -> list[MethodScore]:
        """The methods that ran, best first by :attr:`metric` (stable: ties keep METHODS order)."""
        sign = -1.0 if METRICS[self.metric].higher_is_better else 1.0

        def key(m: MethodScore) -> float:
            value = m.faithfulness.value(self.metric) if m.faithfulness else None
            return math.inf if value is None or math.isnan(value) else sign * value

        return sorted((m for m in self.methods if m.ok), key=key)


def compare_methods(
    image: Any,
    output: str | os.PathLike | None = None,
    model: Any = "efficientnet_lite0",
    methods: Iterable[str] | None = None,
    target: None | int | str = None,
    layer: str | None = None,
    metric: str = DEFAULT_METRIC,
    steps: int = DEFAULT_STEPS,
    alpha: float = 0.4,
    colormap: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    fit: str = "whole",
    **options: Any,
) -> Comparison:
    """Run every method on ``image``, score each heatmap, write one grid picture, rank them.

    Args:
        image: a path, an (H, W, 3) RGB array or a PIL Image.
        output: the grid picture (JPEG, written atomically); ``None`` writes nothing.
        model: zoo name, ``.keras`` path or run directory, or a loaded `Classifier`.
        methods: names from `kerascope.cam.methods.METHODS` (default: all of them).
        target: the class to explain (index, name or WordNet id); default the top-1 class.
        layer: the layer to explain (default: the zoo's, else the last spatial layer).
        metric: the ranking metric, a name from `kerascope.cam.faithfulness.METRICS`; the
            grid also shows deletion, insertion and average drop.
        steps: deletion and insertion steps.
        alpha, colormap: the overlays' opacity and colours (default colormap: the overlay's).
        seed: for ROAD's noise and the order of equally hot pixels.
        progress: called with each method's name before it runs.
        fit: ``whole`` or ``crop``, what the model sees (`kerascope.cam.fitting`): the same
            input, class, probability and maps as `kerascope.explain` with that ``fit``.
        options: ``aug_smooth``, ``eigen_smooth``, ``precision``, as `Explainer` takes them.

    Returns:
        A `Comparison`; ``ranking()`` gives the methods best first.

    Raises:
        ValueError: an unknown method, metric, class or layer (before any work).
        kerascope.images.ImageError: an unreadable image.
    """
    from kerascope.cam import overlay as overlay_module
    from kerascope.cam.base import MethodError, as_classifier
    from kerascope.cam.explain import _cached_explainer, resolve_target
    from kerascope.cam.fitting import as_fractions, check_fit, model_input
    from kerascope.cam.groups import class_or_group
    from kerascope.cam.methods import METHODS, get_method
    from kerascope.images import ImageError
    from kerascope.inference import compiled
    from kerascope.sources import source_name
    from kerascope.zoo.models import Classifier
    from kerascope.zoo.shared import shared_model

    clf = model if isinstance(model, Classifier) else None
    if clf is None:
        clf = shared_model(model) if isinstance(model, str | os.PathLike) else as_classifier(model)
    clf, target = class_or_group(clf, target)  # "cat": a WordNet group (kerascope.cam.groups)
    names = [get_method(m).name for m in (METHODS if methods is None else methods)]
    wanted = check_metrics(dict.fromkeys((*CHEAP_METRICS, metric)))
    colormap = colormap or getattr(overlay_module, "DEFAULT_COLORMAP", "jet")
    overlay_module.colormap_lut(colormap)  # a bad colormap fails before any work
    check_fit(fit)
    item = model_input(clf, image, fit)  # explain's input: one decode and fit for every number
    if item.error is not None:
        raise ImageError(item.source, item.error)
    pixels = item.pixels
    probs = np.asarray(compiled(clf.model)(pixels[None]))[0]
    class_index = int(probs.argmax()) if target is None else resolve_target(clf, target)

    rows, maps = [], {}
    for name in names:
        cls = get_method(name)
        row = MethodScore(name, getattr(cls, "cost", ""), bool(getattr(cls, "sanity", True)))
        rows.append(row)
        if progress is not None:
            progress(name)
        start = time.perf_counter()
        try:
            explainer = _cached_explainer(clf, name, layer, **options)
            cams, _, _ = explainer.explain_batch(pixels[None], class_index)
        except MethodError as exc:
            row.skipped = str(exc)
            continue
        row.seconds = time.perf_counter() - start
        maps[name] = cams[0]
        row.empty = not np.any(cams[0] > 0)
        row.faithfulness = score_pixels(clf, pixels, cams[0], class_index, wanted, steps,
                                        seed=seed)  # fmt: skip
    name = clf.labels[class_index][1]
    comparison = Comparison(
        source_name(image), class_index, name, float(probs[class_index]), metric, rows,
        fit=fit, box=as_fractions(item.box, item.shape), maps=maps,
    )  # fmt: skip
    if output is not None and maps:
        picture = _fit(_panel_picture(image), PANEL_SIDE)
        grid, comparison.panels = draw_grid(comparison, picture, maps, alpha, colormap)
        overlay_module.save_jpeg(grid, output)
        comparison.path = Path(output)
    return comparison


def _panel_picture(image: Any) -> np.ndarray:
    """The picture the panels show: a file decoded no larger than a panel needs (a 12 MP JPEG
    at 1/8 in the DCT, not in full for 320 px), anything else as the model's input reads it."""
    from kerascope.images import load_image
    from kerascope.sources import load_source

    if isinstance(image, str | os.PathLike):
        return load_image(image, max_side=PANEL_SIDE)
    return load_source(image)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled so its longest side is ``side`` (antialiased, as classify resizes)."""
    from kerascope.images import resize

    height, width = image.shape[:2]
    scale = side / max(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))


def draw_grid(
    comparison: Comparison,
    picture: np.ndarray,
    maps: dict[str, np.ndarray],
    alpha: float,
    colormap: str,
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """The grid: a header line, then one panel per method that ran (rank and name, its overlay,
    its numbers), in ranking order, best first. Returns the picture and each overlay's box.
    With a crop (``comparison.box``), each map covers that part, outlined, and the header
    says what the model saw. Every text stays inside its panel (`fit_text`): a long title
    ("#13 guidedbackprop (fails sanity check)") ran into the next panel."""
    from kerascope.cam.fitting import caption, draw_outline, photo_outside, place
    from kerascope.cam.overlay import overlay, upsample

    ranked = [m for m in comparison.ranking() if m.method in maps]
    height, width = picture.shape[:2]
    panel_w = max(width, MIN_PANEL_WIDTH)
    titles = [fit_text(_title(i, row), panel_w, _TITLE_SIZE) for i, row in enumerate(ranked)]
    title_h = max(_TITLE, 3 + max(len(lines) * _line_height(font) for font, lines in titles))
    scores = [_wrapped_scores(row, comparison.metric, panel_w) for row in ranked]
    lines = max(len(s) for s in scores)
    panel_h = title_h + height + lines * _LINE + 6
    cols = min(len(ranked), math.ceil(math.sqrt(len(ranked))))
    rows = math.ceil(len(ranked) / cols)
    canvas_w = cols * panel_w + (cols + 1) * _GAP
    metric = METRICS[comparison.metric]
    header = fit_text(
        f"{comparison.class_name} {percent(comparison.probability)}, ranked by {metric.title} "
        f"({'higher' if metric.higher_is_better else 'lower'} is better)",
        canvas_w - 2 * _GAP, _HEADER_SIZE, _CAPTION_SIZE,
    )  # fmt: skip
    seen = caption(comparison.box, picture.shape)  # one more header line: what the model saw
    seen_text = fit_text(seen, canvas_w - 2 * _GAP, _CAPTION_SIZE) if seen else None
    head = max(_HEADER - 6, len(header[1]) * _line_height(header[0])) + 6
    head += len(seen_text[1]) * _LINE if seen_text else 0
    size = (canvas_w, head + rows * (panel_h + _GAP) + _GAP)
    canvas = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = _draw_lines(draw, (_GAP, 6), header, _TEXT)
    if seen_text:
        _draw_lines(draw, (_GAP, max(y, _HEADER) - 2), seen_text, _DIM, _LINE)
    boxes = []
    for i, row in enumerate(ranked):
        left = _GAP + (i % cols) * (panel_w + _GAP)
        top = head + _GAP + (i // cols) * (panel_h + _GAP)
        _draw_lines(draw, (left, top + 3), titles[i], _HIGHLIGHT if i == 0 else _TEXT)
        heat = upsample(place(maps[row.method], comparison.box, picture.shape), (height, width))
        panel = photo_outside(Image.fromarray(overlay(picture, heat, alpha, colormap)),
                              Image.fromarray(picture), comparison.box)  # fmt: skip
        panel = draw_outline(panel, comparison.box)
        x = left + (panel_w - width) // 2  # a picture narrower than the panel: centred
        canvas.paste(panel, (x, top + title_h))
        boxes.append((row.method, (x, top + title_h, x + width, top + title_h + height)))
        y = top + title_h + height + 3
        for text, chosen in scores[i]:
            font = _font(_SCORE_SIZE, text)
            draw.text((left, y), text, fill=_HIGHLIGHT if chosen else _DIM, font=font)
            y += _LINE
    return np.asarray(canvas, dtype=np.uint8), boxes


def _title(i: int, row: MethodScore) -> str:
    """A panel's title: rank, method, and the sanity verdict where it fails."""
    return f"#{i + 1} {row.method}" + ("" if row.sanity else " (fails sanity check)")


def _wrapped_scores(row: MethodScore, metric: str, width: int) -> list[tuple[str, bool]]:
    """`_score_lines` wrapped to ``width`` (between its pairs of numbers first): the ROAD line
    alone is 325 px at 13 px, wider than a 320 px panel."""
    return [
        (line, chosen)
        for text, chosen in _score_lines(row, metric)
        for line in fit_text(text, width, _SCORE_SIZE, _SCORE_SIZE, shrink=1.0)[1]
    ]  # one size for every number: drawn at _font(_SCORE_SIZE)


def fit_text(
    text: str, width: int, size: int, smallest: int = _SMALLEST, shrink: float = 0.75
) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, list[str]]:
    """(font, lines) drawing all of ``text`` within ``width`` px: on one line at ``size``, or
    down to ``shrink`` times it, else wrapped between words (number pairs, split by two spaces,
    first) at ``size``, shrinking towards ``smallest`` only while a word alone is too wide; a
    word too wide even then is broken between letters. Nothing is cut: the lines, joined,
    are the text."""
    width = max(1, int(width))
    for s in range(size, max(smallest, math.ceil(size * shrink)) - 1, -1):
        font = _font(s, text)
        if _length(font, text) <= width:
            return font, [text]
    for s in range(size, smallest - 1, -1):
        font = _font(s, text)
        words = [w for chunk in text.split("  ") for w in chunk.split(" ")]
        if all(_length(font, w) <= width for w in words) or s == smallest:
            return font, _wrap(font, text, width, ("  ", " ", ""))
    raise AssertionError("unreachable")  # the loop returns at ``smallest``


def _wrap(font, text: str, width: int, seps: tuple[str, ...]) -> list[str]:
    """Greedy lines of ``text`` split at ``seps[0]``; a piece still too wide is split at the
    next separator ("" : between characters)."""
    if _length(font, text) <= width or not seps:
        return [text]
    sep, rest = seps[0], seps[1:]
    pieces = list(text) if sep == "" else text.split(sep)
    lines: list[str] = []
    joinable = False  # the last line ends a whole piece (not a broken one's first part)
    for piece in pieces:
        if joinable and _length(font, lines[-1] + sep + piece) <= width:
            lines[-1] += sep + piece
        elif _length(font, piece) <= width:
            lines.append(piece)
        else:
            lines.extend(_wrap(font, piece, width, rest))
            joinable = False
            continue
        joinable = True
    return lines


def _draw_lines(draw, at: tuple[int, int], fitted, fill, step: int | None = None) -> int:
    """Draw `fit_text`'s lines from ``at`` down; the y below the last."""
    font, lines = fitted
    x, y = at
    for line in lines:
        draw.text((x, y), line, fill=fill, font=font)
        y += step or _line_height(font)
    return y


def _length(font, text: str) -> float:
    """Drawn width of ``text``: advance and ink (a slanted last letter can pass its advance)."""
    if hasattr(font, "getlength"):
        return max(font.getlength(text), font.getbbox(text)[2] if text else 0)
    return font.getbbox(text)[2]


def _line_height(font) -> int:
    """Height of one line at ``font``: ascent + descent (23 px at 18 px), or the bitmap's."""
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent
    return font.getbbox("Ag")[3] + 2


def _score_lines(row: MethodScore, metric: str) -> list[tuple[str, bool]]:
    """The numbers under a panel, one (text, holds the ranking metric) per line."""
    f = row.faithfulness
    assert f is not None
    lines = [
        (f"deletion {f.deletion:.3f}  insertion {f.insertion:.3f}", metric in CHEAP_METRICS[:2]),
        (f"avg drop {f.drop:.1%}  increase {'yes' if f.increase else 'no'}",
         metric in ("drop", "increase")),
    ]  # fmt: skip
    road = [(METRICS[m].title, f.value(m)) for m in ("road_morf", "road_lerf", "road")]
    shown = [f"{title} {value:+.3f}" for title, value in road if value is not None]
    if shown:
        lines.append(("  ".join(shown), metric.startswith("road")))
    if row.empty:
        lines.append(("empty map: no positive evidence", False))
    return lines


def _font(size: int, text: str = "") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font with every glyph of ``text`` at ``size`` px (`kerascope.fonts`, cached there):
    Pillow's bundled one for ASCII, else an installed one (a class named 猫 drew as boxes)."""
    return pillow_font(size, text)
