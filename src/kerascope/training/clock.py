"""Where a training run's wall time went, for ``report.md``.

Why: the report's "training time" is the epochs' time (``history.csv``'s ``seconds``), which a
short run spends a small part of its wall time on: a ``--time-budget 1`` finetune reported
19 s of training in a 67 s run, the rest being the checks, the scan, building and compiling,
timing the steps for the budget, and saving. The clock measures those parts, so the report
names both times and what the difference was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class RunClock:
    """Seconds per part of one session of a run (a resumed run: since the resume), from
    ``started`` (``time.monotonic``; default now)."""

    def __init__(self, started: float | None = None, resumed: bool = False):
        self.started = time.monotonic() if started is None else float(started)
        self.resumed = resumed
        self.seconds: dict[str, float] = {}

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + max(0.0, float(seconds))

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the time inside the block as ``name``: ``checks``, ``scan``, ``setup``,
        ``timing``, ``saving`` (`report.TIME_PARTS`), or ``stage`` and ``fit``, which
        `summary` splits into setup and saving."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - began)

    def epochs_callback(self) -> Any:
        """A Keras callback adding each epoch's time (begin to end, as ``history.csv``'s
        ``seconds`` counts it when placed right after `epochs.EpochLog`) to ``"epochs"``."""
        import keras

        clock = self

        class _Epochs(keras.callbacks.Callback):
            began = 0.0

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.began = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                clock.add("epochs", time.monotonic() - self.began)

        return _Epochs()

    def summary(self) -> dict[str, Any]:
        """``{"wall_seconds", "epoch_seconds", "parts": {name: seconds}, "resumed"}`` now.

        A stage's time outside its ``fit`` is setup (loading the best weights, the frozen
        prefix's outputs, compiling) less the budget's timing; a ``fit``'s time outside its
        epochs is the checkpoints and backups written after each epoch (saving)."""
        s = self.seconds
        fit, epochs = s.get("fit", 0.0), s.get("epochs", 0.0)
        parts = {
            "checks": s.get("checks", 0.0),
            "scan": s.get("scan", 0.0),
            "setup": s.get("setup", 0.0)
            + max(0.0, s.get("stage", 0.0) - fit - s.get("timing", 0.0)),
            "timing": s.get("timing", 0.0),
            "saving": s.get("saving", 0.0) + max(0.0, fit - epochs),
        }
        return {
            "wall_seconds": round(time.monotonic() - self.started, 2),
            "epoch_seconds": round(epochs, 2),
            "parts": {k: round(v, 2) for k, v in parts.items()},
            "resumed": self.resumed,
        }
