"""Every CAM method on one image: one grid picture (each method's overlay with its faithfulness
numbers under it) and a ranking by one metric.

Which method to trust for a model is an empirical question: the maps look alike, their
faithfulness does not (Rong et al. 2022). All methods explain the same class (the image's top-1
unless a target is given), on the same pixels, scored by the same metric. A method that cannot
run on the model (CAM needs a GlobalAveragePooling2D -> Dense head) is skipped with its reason.

A metric alone has no scale: a random noise map beat Grad-CAM on deletion AUC (chelsea.png:
0.139-0.151 against 0.344), since deletion and average drop reward fine-grained maps whatever
they point at. So every comparison also scores :data:`REFERENCE_SEEDS` seeded noise maps at the
model's input resolution (`kerascope.cam.reference`) on the same pixels with the same metrics; a
method that does no better than the best of them is marked, and the method drawn in gold is the
best one that passes the sanity check and beats them (`Comparison.best`), never one that does not.
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
from PIL import Image, ImageDraw

from kerascope.cam.faithfulness import (
    DEFAULT_STEPS,
    METRICS,
    Faithfulness,
    check_metrics,
    score_pixels,
)
from kerascope.cam.reference import (  # noqa: F401  (random_map: API)
    REFERENCE,
    REFERENCE_SEEDS,
    best,
    mean_scores,
    random_map,
    score_reference,
    spread,
)
from kerascope.cam.text import _draw_lines, _font, _line_height, fit_text
from kerascope.cam.wording import NOT_CLASS_SPECIFIC, shown_name
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
_GAP, _TITLE, _LINE, _HEADER = 10, 26, 18, 30
_BACKGROUND, _TEXT, _DIM, _HIGHLIGHT = (24, 24, 24), (255, 255, 255), (170, 170, 170), (255, 214, 0)
NO_BETTER = "no better than a random map"
CLASS_FREE = NOT_CLASS_SPECIFIC  # the tables' and labels' wording
FINE_GRAINED = ("deletion", "drop")
"""Metrics that favour fine-grained (pixel) maps: scattered removals break the picture for any
map, and the image x map of a pixel map is nearly black (avg drop 98-100 % for every pixel
method on chelsea.png), so they say little about where a map points."""


def fine_grained_note(metric: str) -> str:
    """One line saying that ``metric`` favours fine-grained maps; "" for the others."""
    if metric not in FINE_GRAINED:
        return ""
    return (f"{METRICS[metric].title} favours fine-grained (pixel) maps, wherever they point: "
            f"compare each method with the {REFERENCE}, or rank by road_morf")  # fmt: skip


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
    class_independent: bool = False  # the same map for every class (EigenCAM)
    beats_random: bool | None = None  # scores better than the random map (None: not scored)

    @property
    def ok(self) -> bool:
        return self.skipped is None

    @property
    def trusted(self) -> bool:
        """Passes the sanity check, has a map, does better than a random map, and explains the
        class (a class-independent map is never gold: it is not about the class ranked)."""
        return (self.ok and self.sanity and not self.empty and self.beats_random is not False
                and not self.class_independent)  # fmt: skip

    def marks(self) -> list[str]:
        """What to say beside the method's name: the verdicts against it."""
        notes = [CLASS_FREE] if self.class_independent else []
        notes += [] if self.sanity else ["fails sanity check"]
        notes += [NO_BETTER] if self.beats_random is False else []
        return notes


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
    reference: MethodScore | None = None
    """The :data:`REFERENCE` maps' scores on the same pixels, by the same metrics: their mean."""
    reference_runs: list[Faithfulness] = field(default_factory=list, repr=False)
    """Each reference map's scores (`kerascope.cam.reference`); empty: the mean is the bar."""

    def bar(self) -> float | None:
        """What a method must beat by :attr:`metric`: the best reference map's value."""
        if self.reference_runs:
            return best(self.reference_runs, self.metric)
        ref = self.reference.faithfulness if self.reference is not None else None
        return ref.value(self.metric) if ref is not None else None

    def judge(self) -> None:
        """Set each method's ``beats_random``: better by :attr:`metric` than the best random
        map (`bar`); an empty map (no evidence at all) never is, whatever its ties score."""
        base = self.bar()
        sign = -1.0 if METRICS[self.metric].higher_is_better else 1.0
        for row in self.methods:
            value = row.faithfulness.value(self.metric) if row.faithfulness else None
            known = None not in (value, base) and not math.isnan(value) and not math.isnan(base)
            beats = known and not row.empty and sign * value < sign * base  # no map: never
            row.beats_random = beats if known else None

    def best(self) -> MethodScore | None:
        """The best-ranked method that passes the sanity check and beats the random map: the
        one drawn in gold (None when no method does)."""
        return next((m for m in self.ranking() if m.trusted), None)

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
        A `Comparison`; ``ranking()`` gives the methods best first, ``best()`` the one in
        gold, ``reference`` the random map's scores (:data:`REFERENCE`).

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
        row = MethodScore(
            name,
            getattr(cls, "cost", ""),
            bool(getattr(cls, "sanity", True)),
            class_independent=bool(getattr(cls, "class_independent", False)),
        )
        rows.append(row)
        if target is not None and row.class_independent:
            row.skipped = f"{CLASS_FREE}: its map is the same for every class, not about --class"
            continue
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
    runs = score_reference(clf, pixels, class_index, wanted, steps, seed)  # as the methods
    reference = MethodScore(REFERENCE, "", faithfulness=mean_scores(runs))
    name = clf.labels[class_index][1]
    comparison = Comparison(
        source_name(image), class_index, name, float(probs[class_index]), metric, rows,
        fit=fit, box=as_fractions(item.box, item.shape), maps=maps, reference=reference,
        reference_runs=runs,
    )  # fmt: skip
    comparison.judge()
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
    header = fit_text(grid_header(comparison), canvas_w - 2 * _GAP, _HEADER_SIZE, _CAPTION_SIZE)
    seen = caption(comparison.box, picture.shape)  # what the model saw, when a part
    notes = [
        n for n in (seen, *header_notes(comparison, drawn=True)) if n
    ]  # dim lines under the header
    notes_text = [fit_text(n, canvas_w - 2 * _GAP, _CAPTION_SIZE) for n in notes]
    head = max(_HEADER - 6, len(header[1]) * _line_height(header[0])) + 6
    head += sum(len(lines) for _, lines in notes_text) * _LINE
    size = (canvas_w, head + rows * (panel_h + _GAP) + _GAP)
    canvas = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = max(_draw_lines(draw, (_GAP, 6), header, _TEXT), _HEADER) - 2
    for text in notes_text:
        y = _draw_lines(draw, (_GAP, y), text, _DIM, _LINE)
    best = comparison.best()  # gold: never a method that fails the checks
    boxes = []
    for i, row in enumerate(ranked):
        left = _GAP + (i % cols) * (panel_w + _GAP)
        top = head + _GAP + (i // cols) * (panel_h + _GAP)
        _draw_lines(draw, (left, top + 3), titles[i], _HIGHLIGHT if row is best else _TEXT)
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


def grid_header(comparison: Comparison) -> str:
    """The grid's first line: class as pictures name it (``tiger cat``), probability, metric."""
    metric = METRICS[comparison.metric]
    better = "higher" if metric.higher_is_better else "lower"
    return (f"{shown_name(comparison.class_name)} {percent(comparison.probability)}, "
            f"ranked by {metric.title} ({better} is better)")  # fmt: skip


def _title(i: int, row: MethodScore) -> str:
    """A panel's title: rank, method, and the verdicts against it (`MethodScore.marks`)."""
    marks = row.marks()
    return f"#{i + 1} {row.method}" + (f" ({'; '.join(marks)})" if marks else "")


def format_value(metric: str, value: float | None) -> str:
    """A metric's value as tables and the grid print it."""
    if value is None:
        return ""
    if metric == "increase":
        return "1" if value else "0"
    if metric == "drop":
        return f"{value:.1%}"
    return f"{value:+.3f}" if metric.startswith("road") else f"{value:.3f}"


def reference_value(comparison: Comparison, metric: str) -> str:
    """The reference's ``metric`` as tables print it: the maps' mean, ``± sd`` when several."""
    ref = comparison.reference.faithfulness if comparison.reference else None
    mean = format_value(metric, ref.value(metric) if ref is not None else None)
    sd = spread(comparison.reference_runs, metric) if metric != "increase" else None
    if not mean or sd is None:
        return mean
    return f"{mean} ±{format_value(metric, sd).lstrip('+')}"


def reference_line(comparison: Comparison, drawn: bool = False) -> str:
    """What the random maps score by the ranking metric, the bar they set, and the best method
    that passes the checks (``drawn``: the grid, where that one's title is gold)."""
    if comparison.reference is None or comparison.reference.faithfulness is None:
        return ""
    metric, chosen = comparison.metric, comparison.best()
    runs = len(comparison.reference_runs)
    if chosen is None:
        verdict = "no method passes the sanity check and beats it"
    else:
        gold = " (in gold)" if drawn else ""
        verdict = (
            f"the best method that passes the sanity check and beats it: {chosen.method}{gold}"
        )
    scored = f"{METRICS[metric].title} {reference_value(comparison, metric)}"
    if runs > 1:
        scored += (f" (mean ± sd of {runs} seeds; a method must beat the best, "
                   f"{format_value(metric, comparison.bar())})")  # fmt: skip
    return f"a {REFERENCE} (reference) scores {scored}; {verdict}"


def header_notes(comparison: Comparison, drawn: bool = False) -> list[str]:
    """The lines under the grid's header (``drawn``) or the table: the reference, what the
    metric favours, a class the model all but rules out."""
    from kerascope.cam.labels import is_negligible

    notes = [reference_line(comparison, drawn), fine_grained_note(comparison.metric)]
    if is_negligible(comparison.probability):
        notes.append(f"maps' shape only: the model gives this class "
                     f"{percent(comparison.probability)}")  # fmt: skip
    return [n for n in notes if n]


def _wrapped_scores(row: MethodScore, metric: str, width: int) -> list[tuple[str, bool]]:
    """`_score_lines` wrapped to ``width`` (between its pairs of numbers first): the ROAD line
    alone is 325 px at 13 px, wider than a 320 px panel."""
    return [
        (line, chosen)
        for text, chosen in _score_lines(row, metric)
        for line in fit_text(text, width, _SCORE_SIZE, _SCORE_SIZE, shrink=1.0)[1]
    ]  # one size for every number: drawn at _font(_SCORE_SIZE)


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
