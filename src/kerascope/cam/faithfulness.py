"""Does a heatmap point at what the model really uses? Perturb the image where it says, and watch
the class probability.

A heatmap can look right and still not be faithful to the model (Adebayo et al. 2018), so the
numbers come from the model itself. All perturbed copies of an image are built at the
classifier's input size (as the model sees it) and run in batches through the fast engine
(`kerascope.inference.compiled`: onnxruntime on CPU). The heatmap is upsampled (bilinear) to
that size and min-max scaled to [0, 1]; pixels are ranked by it, ties broken at random (seeded),
so a map with flat regions removes exact fractions.

* **deletion / insertion** (Petsiuk et al. 2018, "RISE", Sec. 4.1): remove the most important
  pixels first, ``steps`` equal steps from 0 to 100 %, replaced by the image's mean colour (RISE
  uses zeros in normalised space: the dataset's mean colour); insertion puts the original
  pixels, most important first, into a blurred copy (Gaussian, sigma 15 px at 224 px: RISE's
  sigma of 5 px left EfficientNet-Lite0 calling the blurred chelsea.png a cat at 48 %, so
  insertion had little range to measure). The score is the area under the class-probability
  curve, x in [0, 1] (trapezoids). Deletion: lower is better; insertion: higher is better.
* **ROAD** (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", Sec. 4): removed pixels are filled by noisy linear imputation, each one the
  weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals), all
  solved together as one sparse linear system, plus Gaussian noise; unlike a constant fill, the
  fill does not draw the removed shape for the model to see. MoRF removes the most relevant
  pixels, LeRF the least relevant; each is swept over :data:`ROAD_PERCENTILES` % removed and
  reported as pytorch-grad-cam's ``ROAD*Average`` does: the mean change of the class
  probability (negative: it fell). MoRF: lower is better; LeRF: higher; ``road`` = (LeRF -
  MoRF) / 2, higher is better (its ``ROADCombined``).
* **average drop / increase in confidence** (Chattopadhyay et al. 2018, "Grad-CAM++",
  Sec. 5.1): the image multiplied by the heatmap, ``drop = max(0, p - p_masked) / p`` (lower
  is better) and ``increase = p_masked > p`` (averaged over images: a rate, higher is better).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerascope.cam.imputation import ROAD_NOISE, impute  # noqa: F401  (API: both)
from kerascope.errors import KerascopeError

DEFAULT_STEPS = 20
"""Deletion and insertion in 20 steps of 5 % (21 forward passes each)."""
ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""Percent of pixels removed in the ROAD sweep, as pytorch-grad-cam's ``ROAD*Average``."""
BLUR_SIGMA = 15.0 / 224
"""Insertion's starting image: a Gaussian blur of this std, as a fraction of the input's shorter
side (15 px at 224 px; see the module docstring)."""


class MetricError(KerascopeError, ValueError):
    """An unknown metric name or an explanation that cannot be scored."""


@dataclass(frozen=True)
class Metric:
    """One number a `Faithfulness` holds: its title in tables and which way is better."""

    name: str
    title: str
    higher_is_better: bool
    about: str  # one line for --help: what it measures and what it costs


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("deletion", "deletion AUC", False, "area under the probability as the hottest "
               "pixels go first (steps + 1 forwards)"),
        Metric("insertion", "insertion AUC", True, "area under the probability as the hottest "
               "pixels come back into a blurred copy (steps + 1 forwards)"),
        Metric("road_morf", "ROAD MoRF", False, "mean probability change with the most relevant "
               "10..90 % imputed (9 sparse solves + 9 forwards)"),
        Metric("road_lerf", "ROAD LeRF", True, "mean probability change with the least relevant "
               "10..90 % imputed (9 sparse solves + 9 forwards)"),
        Metric("road", "ROAD", True, "(LeRF - MoRF) / 2 (both sweeps)"),
        Metric("drop", "avg drop", False, "relative probability drop on image x heatmap "
               "(1 forward)"),
        Metric("increase", "increase", True, "whether image x heatmap scores higher (1 forward)"),
    )
}  # fmt: skip
"""Every metric, in the order tables show them."""


@dataclass
class Faithfulness:
    """The faithfulness numbers of one heatmap for one class; ``None`` where not computed.

    Curves: ``deletion_curve`` / ``insertion_curve`` hold the class probability at 0, 1/steps,
    ..., 100 % of the pixels removed / inserted; ``road_morf_curve`` / ``road_lerf_curve`` the
    probability change at each of ``road_percentiles``.
    """

    class_index: int
    probability: float  # the class probability on the unperturbed image
    deletion: float | None = None
    insertion: float | None = None
    road_morf: float | None = None
    road_lerf: float | None = None
    drop: float | None = None
    increase: bool | None = None
    deletion_curve: np.ndarray | None = field(default=None, repr=False)
    insertion_curve: np.ndarray | None = field(default=None, repr=False)
    road_morf_curve: np.ndarray | None = field(default=None, repr=False)
    road_lerf_curve: np.ndarray | None = field(default=None, repr=False)
    road_percentiles: tuple[int, ...] = field(default=ROAD_PERCENTILES, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    """The map scored, at the model's input size, min-max scaled: pixels are ranked by it."""

    @property
    def road(self) -> float | None:
        """pytorch-grad-cam's ``ROADCombined``: (LeRF - MoRF) / 2, higher is better."""
        if self.road_morf is None or self.road_lerf is None:
            return None
        return (self.road_lerf - self.road_morf) / 2

    def value(self, metric: str) -> float | None:
        """The number for ``metric`` (a :data:`METRICS` name) as a float, None if not computed."""
        check_metrics([metric])
        v = getattr(self, metric)
        return None if v is None else float(v)

    def scores(self) -> dict[str, float]:
        """Every computed metric, in :data:`METRICS` order."""
        return {m: v for m in METRICS if (v := self.value(m)) is not None}


def check_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """Metric names -> a checked tuple (``None``: all); an unknown name is one clear error."""
    names = tuple(METRICS) if metrics is None else tuple(metrics)
    for name in names:
        if name not in METRICS:
            raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return names


def faithfulness(
    image: str | os.PathLike | np.ndarray | Any,
    explanation: Any,
    model: Any = "efficientnet_lite0",
    metrics: Iterable[str] | None = None,
    steps: int = DEFAULT_STEPS,
    class_index: int | None = None,
    road_percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
    batch_size: int = 32,
    fit: str | None = None,
) -> Faithfulness:
    """How faithful a heatmap is to the model: deletion, insertion, ROAD, average drop.

    The numbers are computed on the input the explanation was computed on: ``image`` fitted to
    the model under the explanation's ``fit`` (`kerascope.cam.fitting`), and its map as the
    model computed it (``Explanation.model_map``), so class, probability and map are the ones
    its picture shows.

    Args:
        image: a path, an (H, W, 3) RGB array or a PIL Image: the image that was explained.
        explanation: an `Explanation` from `kerascope.explain` (its ``heatmap`` and
            ``class_index`` are used), or a raw (h, w) heatmap at any resolution.
        model: zoo name, ``.keras`` path or run directory, a loaded `Classifier` (reuse it:
            loading costs seconds) or a bare Keras model.
        metrics: names from :data:`METRICS` (default: all). ``road`` computes both sweeps,
            ``drop`` and ``increase`` come together.
        steps: deletion and insertion steps (each costs one forward pass).
        class_index: the class to score; default the explanation's, else the top-1 class.
        road_percentiles: percent of pixels removed in the ROAD sweeps.
        seed: for the imputation noise and the order of equally hot pixels.
        batch_size: perturbed images per forward pass.
        fit: ``whole`` or ``crop``: what the model sees of ``image``; default the
            explanation's, ``whole`` for a raw heatmap (which then covers the whole picture;
            with ``crop`` its part over the crop is scored).

    Returns:
        A `Faithfulness` with the requested numbers (the others ``None``).

    Raises:
        MetricError: an unknown metric, bad steps or percentiles, an explanation with an error.
        kerascope.images.ImageError: an unreadable image file.

    Example:
        >>> e = kerascope.explain("chelsea.png")
        >>> f = kerascope.faithfulness("chelsea.png", e)
        >>> f.deletion < f.insertion
        True
    """
    from kerascope.cam.base import as_classifier
    from kerascope.cam.fitting import FitError, check_fit, model_input, same_picture
    from kerascope.images import ImageError
    from kerascope.zoo.models import Classifier
    from kerascope.zoo.shared import shared_model

    clf = model if isinstance(model, Classifier) else None
    if clf is None:
        clf = shared_model(model) if isinstance(model, str | os.PathLike) else as_classifier(model)
    heatmap, explained, explained_fit, placed = _heatmap_of(explanation)
    fit = fit or explained_fit or "whole"
    try:
        check_fit(fit)
    except FitError as exc:
        raise MetricError(str(exc)) from None
    item = model_input(clf, image, fit)
    if item.error is not None:
        raise ImageError(item.source, item.error)
    drawn = getattr(explanation, "heatmap", None)  # an Explanation's map, at its picture's size
    if drawn is not None and not same_picture(np.shape(drawn), item.shape[:2]):
        (h, w), (ih, iw) = np.shape(drawn), item.shape[:2]
        raise MetricError(f"the explanation is of a {w}x{h} picture, the image given is "
                          f"{iw}x{ih}: pass the image that was explained")  # fmt: skip
    if placed:  # a map over the whole picture: the part the model saw
        heatmap = _part(_finite(heatmap), item.box, item.shape)
    target = class_index if class_index is not None else explained
    return score_pixels(
        clf, item.pixels, heatmap, target, metrics, steps, road_percentiles, seed, batch_size
    )


def _heatmap_of(explanation: Any) -> tuple[np.ndarray, int | None, str | None, bool]:
    """(map, its class or None, its fit or None, whether the map covers the whole picture)
    from an `Explanation` (its ``model_map`` when it has one) or a raw array."""
    if hasattr(explanation, "heatmap") and hasattr(explanation, "class_index"):
        if getattr(explanation, "error", None):
            raise MetricError(
                f"cannot score '{explanation.source}': it was not explained ({explanation.error})"
            )
        fit = getattr(explanation, "fit", None)
        model_map = getattr(explanation, "model_map", None)
        if model_map is not None:
            return np.asarray(model_map), explanation.class_index, fit, False
        if explanation.heatmap is None:
            raise MetricError("the explanation has no heatmap; pass one from kerascope.explain")
        return np.asarray(explanation.heatmap), explanation.class_index, fit, True
    heatmap = np.asarray(explanation)
    if heatmap.ndim != 2 or not np.issubdtype(heatmap.dtype, np.number):
        raise MetricError(
            f"explanation must be an Explanation or a 2-D heatmap, got shape {heatmap.shape}"
        )
    return heatmap, None, None, True


def _part(heatmap: np.ndarray, box: tuple[float, ...] | None, shape: tuple[int, ...]) -> np.ndarray:
    """The part of a map over a whole (height, width) picture that lies in ``box`` (picture
    pixels, `kerascope.images.fit_box`): what the model saw."""
    if box is None:
        return heatmap
    height, width = (int(s) for s in shape[:2])
    rows, cols = heatmap.shape
    left, top, right, bottom = box
    r0, r1 = int(np.floor(top / height * rows)), int(np.ceil(bottom / height * rows))
    c0, c1 = int(np.floor(left / width * cols)), int(np.ceil(right / width * cols))
    return heatmap[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)]


def score_pixels(
    clf: Any,
    pixels: np.ndarray,
    heatmap: np.ndarray,
    class_index: int | None = None,
    metrics: Iterable[str] | None = None,
    steps: int = DEFAULT_STEPS,
    road_percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
    batch_size: int = 32,
) -> Faithfulness:
    """`faithfulness` on an image already at ``clf.input_size`` ((h, w, 3) uint8), for callers
    that have it decoded (``explain --score``, ``--compare``)."""
    return score_maps(clf, pixels, [heatmap], class_index, metrics, steps, road_percentiles,
                      seed, batch_size)[0]  # fmt: skip


def score_maps(
    clf: Any,
    pixels: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    class_index: int | None = None,
    metrics: Iterable[str] | None = None,
    steps: int = DEFAULT_STEPS,
    road_percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
    batch_size: int = 32,
) -> list[Faithfulness]:
    """`score_pixels` of several maps of one image, each as it would score alone (ranked and
    imputed with ``seed``), their perturbed copies run through the model together: one batched
    run, the unperturbed image once (--compare's random reference, `kerascope.cam.reference`)."""
    from kerascope.inference import compiled

    wanted = set(check_metrics(metrics))
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise MetricError(f"steps must be a whole number of at least 1, got {steps!r}")
    percentiles = tuple(int(p) for p in road_percentiles)
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise MetricError(f"ROAD percentiles must lie strictly between 0 and 100: {percentiles}")
    image = np.asarray(pixels, dtype=np.float32)
    batches: dict[Any, np.ndarray] = {"original": image[None]}
    heats = []
    for k, heatmap in enumerate(heatmaps):
        heat, copies = _copies(image, heatmap, wanted, steps, percentiles, seed)
        heats.append(heat)
        batches.update({(k, name): copy for name, copy in copies.items()})
    probs = _class_probabilities(compiled(clf.model), batches, class_index, batch_size)
    target, p = int(probs.pop("class_index")), float(probs.pop("original")[0])
    return [
        _result(Faithfulness(target, p, road_percentiles=percentiles, heatmap=heat),
                {key[1]: v for key, v in probs.items() if key[0] == k})
        for k, heat in enumerate(heats)
    ]  # fmt: skip


def _copies(image, heatmap, wanted: set[str], steps: int, percentiles, seed: int):
    """(the map at the input size in [0, 1], each metric's perturbed copies of ``image``)."""
    from kerascope.cam.overlay import upsample

    heat = _unit_range(upsample(_unit_range(_finite(heatmap)), image.shape[:2]))  # upsample clips
    rng = np.random.default_rng(seed)
    rank = _ranks(heat, rng)  # 0 = the hottest pixel
    batches: dict[str, np.ndarray] = {}
    if "deletion" in wanted:
        batches["deletion"] = _deletion(image, rank, steps)
    if "insertion" in wanted:
        batches["insertion"] = _insertion(image, rank, steps)
    if wanted & {"road_morf", "road"}:
        batches["road_morf"] = _road(image, rank, percentiles, True, rng)
    if wanted & {"road_lerf", "road"}:
        batches["road_lerf"] = _road(image, rank, percentiles, False, rng)
    if wanted & {"drop", "increase"}:
        batches["drop"] = (image * heat[..., None])[None]
    return heat, batches


def _result(result: Faithfulness, probs: dict[str, np.ndarray]) -> Faithfulness:
    """``result`` with the numbers of its copies' class probabilities ``probs`` filled in."""
    p = result.probability
    if "deletion" in probs:
        result.deletion_curve = probs["deletion"]
        result.deletion = _auc(probs["deletion"])
    if "insertion" in probs:
        result.insertion_curve = probs["insertion"]
        result.insertion = _auc(probs["insertion"])
    for name in ("road_morf", "road_lerf"):
        if name in probs:
            setattr(result, f"{name}_curve", probs[name] - p)
            setattr(result, name, float(np.mean(probs[name] - p)))
    if "drop" in probs:
        masked = float(probs["drop"][0])
        result.drop = max(0.0, p - masked) / p if p > 0 else 0.0
        result.increase = masked > p
    return result


def _finite(heatmap: np.ndarray) -> np.ndarray:
    a = np.asarray(heatmap, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise MetricError(f"heatmap must be 2-D (h, w), got shape {a.shape}")
    if not np.isfinite(a).any():  # all NaN was scored as a flat map
        raise MetricError("the heatmap has no finite value (all NaN or infinite)")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _unit_range(heat: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], as pytorch-grad-cam's ``scale_cam_image``; a flat map becomes 0."""
    low, high = float(heat.min()), float(heat.max())
    if high <= low:
        return np.zeros_like(heat)
    return ((heat - low) / (high - low)).astype(np.float32)


def _ranks(heat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(h, w) rank of each pixel, hottest first; equally hot pixels in a random order."""
    flat = heat.ravel()
    order = np.lexsort((rng.random(flat.size), -flat))
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    return rank.reshape(heat.shape)


def _counts(total: int, steps: int) -> np.ndarray:
    return np.rint(np.linspace(0, total, steps + 1)).astype(np.int64)


def _deletion(image: np.ndarray, rank: np.ndarray, steps: int) -> np.ndarray:
    """(steps + 1) copies with the 0, 1/steps, ... hottest fraction set to the mean colour."""
    fill = image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    gone = rank[None] < _counts(rank.size, steps)[:, None, None]
    return np.where(gone[..., None], fill, image[None])


def _insertion(image: np.ndarray, rank: np.ndarray, steps: int) -> np.ndarray:
    """(steps + 1) blurred copies with the 0, 1/steps, ... hottest fraction of pixels restored."""
    from scipy import ndimage

    sigma = BLUR_SIGMA * min(image.shape[:2])
    blurred = ndimage.gaussian_filter(image, (sigma, sigma, 0), truncate=3.0, mode="nearest")
    back = rank[None] < _counts(rank.size, steps)[:, None, None]
    return np.where(back[..., None], image[None], blurred[None])


def _road(image, rank, percentiles, most_relevant_first: bool, rng) -> np.ndarray:
    """One imputed copy per percentile: that percent of pixels removed, MoRF or LeRF."""
    out = np.empty((len(percentiles), *image.shape), np.float32)
    for i, percent in enumerate(percentiles):
        k = round(rank.size * percent / 100)
        removed = rank < k if most_relevant_first else rank >= rank.size - k
        out[i] = impute(image, removed, rng)
    return out


def _class_probabilities(forward, batches: dict[Any, np.ndarray], class_index, batch_size):
    """Run every perturbed batch through ``forward`` in chunks; the class's probability per
    image, per batch name, plus ``class_index`` (the top-1 of the original when not given)."""
    names = list(batches)
    stacked = np.concatenate([batches[n] for n in names])
    probs = []
    for start in range(0, len(stacked), batch_size):
        chunk = stacked[start : start + batch_size]  # the last one runs at batch_size too
        out = np.asarray(forward(chunk, batch_size, len(stacked)), dtype=np.float64)
        if start == 0:
            if out.ndim != 2:
                raise MetricError(f"the model's output has shape {out.shape}; expected classes")
            if class_index is None:
                class_index = int(out[0].argmax())
            elif not 0 <= int(class_index) < out.shape[1]:
                raise MetricError(f"class index {class_index} outside 0..{out.shape[1] - 1}")
        probs.append(out[:, int(class_index)])
    flat = np.concatenate(probs)
    result: dict[str, Any] = {"class_index": int(class_index)}
    start = 0
    for n in names:
        result[n] = flat[start : start + len(batches[n])]
        start += len(batches[n])
    return result


def _auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over x in [0, 1] (trapezoids; RISE's ``auc``)."""
    curve = np.asarray(curve, dtype=np.float64)
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / (len(curve) - 1))


def iter_scores(
    clf: Any,
    sources: Sequence,
    method: str = "gradcam",
    targets: np.ndarray | None = None,
    layer: str | None = None,
    metrics: Iterable[str] | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 16,
    seed: int = 0,
    fit: str = "whole",
    **options: Any,
) -> Iterator[tuple[Any, Faithfulness | None]]:
    """Explain sources (as `kerascope.sources.normalise_inputs` returns them) and score each
    map: ``(Explanation without heatmap, Faithfulness)`` in order, ``None`` for a source that
    could not be explained (its ``error`` says why). ``options``: ``aug_smooth``,
    ``eigen_smooth``, ``precision`` as `Explainer` takes them. What ``kerascope explain
    --score`` prints. Each map is scored on the very pixels it was computed from (``fit``:
    `kerascope.cam.fitting`), decoded once."""
    from kerascope.cam.explain import _cached_explainer, iter_unplaced

    check_metrics(metrics)
    explainer = _cached_explainer(clf, method, layer, **options)
    found = iter_unplaced(clf, explainer, sources, targets, batch_size, fit=fit)
    for e, cam, item in found:
        if not e.ok:
            yield e, None
            continue
        e.model_map = cam
        yield e, score_pixels(clf, item.pixels, cam, e.class_index, metrics, steps, seed=seed)
