"""--compare's random reference: seeded noise maps, scored as the methods are, that a method
must beat to be trusted (`kerascope.cam.compare`).

A metric alone has no scale, so every comparison scores noise at the model's input resolution
(the finest a map can be) on the same pixels with the same metrics. One seeded map was not
enough: its ROAD MoRF on chelsea.png moved with the seed (sd 0.017 over 8 seeds, mean -0.032),
so a method within that of it was marked, or not, by the seed. :data:`REFERENCE_SEEDS` maps
are scored, their perturbed copies in one batched run (`faithfulness.score_maps`); a method must
beat the best of them, and the reference row shows their mean and standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kerascope.cam.faithfulness import DEFAULT_STEPS, METRICS, Faithfulness, score_maps

REFERENCE = "random map"
"""The reference every method is measured against: uniform noise, seeded, at the input size."""
REFERENCE_SEEDS = 4
"""Noise maps scored (seeds ``seed`` .. ``seed + 3``): a method must beat the best of them."""


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """One :data:`REFERENCE` map: (height, width) uniform noise in [0, 1), seeded."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def score_reference(
    clf: Any,
    pixels: np.ndarray,
    class_index: int,
    metrics: Iterable[str],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    seeds: int = REFERENCE_SEEDS,
) -> list[Faithfulness]:
    """Each of ``seeds`` noise maps (seeds ``seed``, ``seed + 1``, ...) scored on ``pixels`` as
    a method's map is (the same ``seed`` for ROAD's noise), in one batched run."""
    maps = [random_map(pixels.shape[:2], seed + k) for k in range(seeds)]
    return score_maps(clf, pixels, maps, class_index, metrics, steps, seed=seed)


def mean_scores(runs: Sequence[Faithfulness]) -> Faithfulness:
    """The runs' mean of every number they hold (``increase``: whether most increased); the
    first run's map and curves, as one run shows them."""
    first = runs[0]
    mean = Faithfulness(first.class_index, first.probability, heatmap=first.heatmap,
                        road_percentiles=first.road_percentiles)  # fmt: skip
    for name in ("deletion", "insertion", "road_morf", "road_lerf", "drop", "increase"):
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        if values:
            average = float(np.mean(values))
            setattr(mean, name, average > 0.5 if name == "increase" else average)
    return mean


def values(runs: Sequence[Faithfulness], metric: str) -> list[float]:
    """The runs' finite values of ``metric``."""
    found = (r.value(metric) for r in runs)
    return [v for v in found if v is not None and not math.isnan(v)]


def best(runs: Sequence[Faithfulness], metric: str) -> float | None:
    """The best of the runs by ``metric``: the bar a method must beat (None: none scored)."""
    found = values(runs, metric)
    if not found:
        return None
    return max(found) if METRICS[metric].higher_is_better else min(found)


def spread(runs: Sequence[Faithfulness], metric: str) -> float | None:
    """The runs' standard deviation of ``metric`` (None for fewer than two)."""
    found = values(runs, metric)
    return float(np.std(found, ddof=1)) if len(found) > 1 else None
