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
