"""What a user sees while a stage trains: an early time estimate, then img/s every epoch.

Keras's own bar says nothing about how long the run will take and, when stdout is not a
terminal (CI, ``nohup``, a pipe), prints nothing until the epoch ends. This callback times the
first steps, prints the estimated time per epoch and for the stage, and ends every epoch with
one line carrying its metrics and images per second, on a terminal or not.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402

_SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")
TIMED_STEPS = 10  # steps timed before the estimate is printed


class TrainProgress(keras.callbacks.Callback):
    """Estimate after the first ``TIMED_STEPS`` steps; one line per epoch with img/s.

    Args:
        images_per_epoch: training images in one epoch (for img/s).
        end_epoch: the epoch (1-based) the stage ends with at most; a resumed stage estimates
            only the epochs it has left.
        stream: where to print (stdout by default).
        cached: epochs read stored outputs of a frozen part (computed once), so img/s is the
            trained part's speed alone and is labelled so.
    """

    def __init__(self, images_per_epoch: int, end_epoch: int, stream: TextIO | None = None,
                 cached: bool = False):  # fmt: skip
        super().__init__()
        self.images = int(images_per_epoch)
        self.end_epoch = int(end_epoch)
        self.stream = stream or sys.stdout
        self.unit = "img/s on cached features" if cached else "img/s"
        self._estimated = False
        self._first_epoch: int | None = None
        self._epoch_start = 0.0
        self._step_ends: list[float] = []
        self._last: dict | None = None
        self._trained: float | None = None
        self._first_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch_start = time.perf_counter()
        self._step_ends = []
        self._last, self._trained = None, None

    def on_test_begin(self, logs=None) -> None:
        if self._trained is None:
            self._trained = self._train_end()

    def _train_end(self) -> float:
        """Seconds since the epoch began, once the last step has really run (JAX returns a
        step's results before computing them, so a step's end is not its completion)."""
        for value in (self._last or {}).values():
            with contextlib.suppress(Exception):
                float(keras.ops.convert_to_numpy(value))
        return time.perf_counter() - self._epoch_start

    @property
    def _left(self) -> int:
        """Epochs this fit runs, counting the one in progress."""
        return max(1, self.end_epoch - (self._first_epoch or 0))

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._last = logs
        self._step_ends.append(time.perf_counter())
        steps = self.params.get("steps") or 0
        # Wait for enough steps: the first ones may come from batches prefetched during
        # compilation, so the later half of the first TIMED steps sets the pace. Epochs of
        # fewer steps are timed whole, on the second epoch (the first one compiles).
        if self._estimated or steps < TIMED_STEPS or len(self._step_ends) < TIMED_STEPS:
            return
        self._estimated = True
        ends = self._step_ends
        first = ends[0] - self._epoch_start  # includes compilation
        half = len(ends) // 2
        per_step = (ends[-1] - ends[half]) / max(1, len(ends) - 1 - half)
        epoch = first + per_step * max(0, steps - 1)
        self._print(
            f"  estimated {_duration(epoch)} per epoch, up to {_duration(epoch * self._left)} "
            f"for {self._left} epoch(s) (first step {first:.1f} s incl. compilation, then "
            f"{_per_step(per_step)}; validation not included)"
        )

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        train = self._trained if self._trained is not None else self._train_end()
        seconds = time.perf_counter() - self._epoch_start
        metrics = "  ".join(f"{k} {logs[k]:.4f}" for k in _SHOWN if logs and k in logs)
        rate = self.images / train if train > 0 else float("nan")
        self._print(f"  epoch {epoch + 1}: {metrics}  {rate:.1f} {self.unit}  {seconds:.1f} s")
        if self._estimated:
            return
        if epoch == self._first_epoch:
            self._first_seconds = seconds
            return
        self._estimated = True  # short epochs: this one, past compilation, sets the pace
        left = self.end_epoch - epoch - 1
        if left > 0:
            self._print(
                f"  estimated {_duration(seconds)} per epoch, about {_duration(seconds * left)} "
                f"for the {left} epoch(s) left (the first took {self._first_seconds:.1f} s "
                "incl. compilation)"
            )

    def _print(self, line: str) -> None:
        """On a terminal, over the line of Keras's bar in progress (erased first: the bar
        redraws itself on the next line), else plainly."""
        erase = "\r\x1b[K" if _is_terminal(self.stream) else ""
        print(erase + line, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def _per_step(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms/step" if seconds < 0.1 else f"{seconds:.2f} s/step"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def steady_images_per_second(run_dir: str | os.PathLike, stage: int | None = None) -> float | None:
    """A run's steady training throughput: the median ``images_per_second`` of
    ``history.csv`` over every epoch but the first of each stage (which pays compilation), of
    ``stage`` only when given (1-based); None when no such epoch was recorded.

    Example:
        >>> steady_images_per_second("runs/gpu-transfer")  # doctest: +SKIP
        5230.4
    """
    from kerascope.report import read_history

    rows = read_history(Path(run_dir) / "history.csv")
    firsts: dict[int, int] = {}
    for row in rows:
        firsts.setdefault(row["stage"], row["epoch"])
    rates = [row["images_per_second"] for row in rows
             if row.get("images_per_second") and row["epoch"] != firsts[row["stage"]]
             and (stage is None or row["stage"] == stage)]  # fmt: skip
    return statistics.median(rates) if rates else None
