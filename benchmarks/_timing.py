"""Shared timing for the benchmark scripts (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def images_per_second(
    fn: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float, repeats: int
) -> float:
    """Best of ``repeats`` timed windows after two warm-up calls: the least-noise estimate."""
    fn(batch)
    fn(batch)
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(batch)
            count += len(batch)
        best = max(best, count / (time.perf_counter() - start))
    return best


def window_rate(fn: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Images per second over one timed window of ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        count += len(batch)
    return count / (time.perf_counter() - start)


def interleaved(contenders: dict, repeats: int, show: bool = True) -> dict:
    """Measure every contender once per repeat, in turn (A B C A B C ...), so a neighbour's
    load on a shared machine hits all of them alike; ``{name: [value per repeat]}``."""
    values: dict = {name: [] for name in contenders}
    for rep in range(repeats):
        for name, measure in contenders.items():
            values[name].append(measure())
            if show:
                print(f"  repeat {rep + 1}: {name}: {values[name][-1]:.1f}", flush=True)
    return values


def spread(values: list[float]) -> str:
    """``median [min - max]``: the figure and how much the machine moved it."""
    return f"{float(np.median(values)):.1f} [{min(values):.1f} - {max(values):.1f}]"
