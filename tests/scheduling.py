"""Heaviest test files first, so that `make test`'s xdist workers finish together.

``--dist loadfile`` hands out whole files, and xdist orders them by their number of tests: the
files with few but heavy tests (the explain memory runs, the features recipe, Ray) came last,
and one worker ran them while the other idled. Here each file's cost is the sum of its
collected tests' seconds as the last runs measured them (kept in pytest's cache, by test id,
so ``-k``/``-m`` selections add up only what runs); a test never measured counts 20 s if it
is marked slow, else 1 s (a fresh clone: the slow-marked files go first).

The controller reads the cache once and hands the figures to its workers in a file, so every
worker orders the same collection the same way (xdist aborts a run whose workers disagree),
even while another session in the same checkout writes the cache.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

SNAPSHOT_ENV = "KERASCOPE_TEST_SECONDS"  # the controller's snapshot, for its workers
UNMEASURED_SLOW, UNMEASURED = 20.0, 1.0


def cache_key() -> str:
    """One record per backend: `make test` runs the ``backends`` tests again on torch."""
    return "kerascope/test-seconds-" + os.environ.get("KERAS_BACKEND", "jax")


def snapshot(config: pytest.Config, folder: Path) -> None:
    """In the controller (or a run without xdist): the measured seconds, for the workers."""
    cache = getattr(config, "cache", None)
    seconds = cache.get(cache_key(), {}) if cache is not None else {}
    path = folder / "test-seconds.json"
    path.write_text(json.dumps(seconds if isinstance(seconds, dict) else {}))
    os.environ[SNAPSHOT_ENV] = str(path)


def _measured() -> dict[str, float]:
    path = os.environ.get(SNAPSHOT_ENV)
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def heaviest_files_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: whole files by falling cost, each file's tests as they were."""
    seconds = _measured()
    cost: dict[str, float] = defaultdict(float)
    for item in items:
        default = UNMEASURED_SLOW if item.get_closest_marker("slow") else UNMEASURED
        cost[item.nodeid.split("::")[0]] += float(seconds.get(item.nodeid, default))
    first_seen = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::")[0], i)
    items.sort(key=lambda it: (-cost[f := it.nodeid.split("::")[0]], first_seen[f]))


class Recorder:
    """Adds up each test's setup, call and teardown seconds as the reports arrive (in the
    controller under xdist) and merges them into the cache at the end of the session."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.seconds:
            return
        known = cache.get(cache_key(), {})
        known = known if isinstance(known, dict) else {}
        known.update({k: round(v, 2) for k, v in self.seconds.items()})
        cache.set(cache_key(), known)
