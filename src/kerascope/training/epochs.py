"""What a stage's epochs read and write besides the weights: the batches of a split stage
(through its compiled frozen prefix, `kerascope.training.split`) and each epoch's row of
``history.csv`` (with its training time and throughput) and the run's state.

Moved out of ``training.run`` (which keeps the run's order of work) so that file stays one
thing: configure, scan, build, train each stage, finish.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402

from kerascope import interrupts  # noqa: E402
from kerascope.data.affine import random_affine  # noqa: E402
from kerascope.data.augment import AugmentConfig  # noqa: E402
from kerascope.data.regularise import RegulariseConfig  # noqa: E402
from kerascope.report import read_history, write_history  # noqa: E402
from kerascope.rundir import read_state, write_state  # noqa: E402
from kerascope.training.checkpoints import read_best  # noqa: E402
from kerascope.training.split import PrefixSequence, SplitModel, prefix_forward  # noqa: E402


class InterruptCheck(keras.callbacks.Callback):
    """A Ctrl-C that Python swallowed (`kerascope.interrupts`) raised again after the batch."""

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()


class EpochLog(keras.callbacks.Callback):
    """Appends each epoch to ``history.csv`` (rewriting epochs redone after a resume) and
    records the stage and epoch in ``run_state.json``.

    ``train_seconds`` is the epoch's training alone (validation excluded; the device is
    waited for, so queued asynchronous steps count), ``images_per_second`` the training
    images over it: the steady throughput is this column from the second epoch of a stage on
    (the first includes compilation)."""

    def __init__(self, run_dir: Path, stage: int, images: int = 0):
        super().__init__()
        self.run_dir, self.stage, self.images = run_dir, stage, int(images)
        self.started = time.perf_counter()
        self.trained: float | None = None
        self.last: Any = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()
        self.trained, self.last = None, None

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.last = logs

    def on_test_begin(self, logs=None) -> None:
        if self.trained is None:
            self.trained = self._train_end()

    def _train_end(self) -> float:
        """Now, once the last step's results exist (JAX returns before computing them)."""
        if self.last:
            for value in self.last.values():
                with contextlib.suppress(Exception):
                    float(keras.ops.convert_to_numpy(value))
        return time.perf_counter() - self.started

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        trained = self.trained if self.trained is not None else self._train_end()
        logs = logs or {}
        path = self.run_dir / "history.csv"
        rows = [r for r in read_history(path) if r["epoch"] <= epoch]
        lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        row = {k: logs.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        seconds = round(time.perf_counter() - self.started, 3)
        rate = round(self.images / trained, 1) if trained > 0 and self.images else None
        rows.append({"epoch": epoch + 1, "stage": self.stage, **row, "lr": float(lr),
                     "seconds": seconds, "train_seconds": round(trained, 3),
                     "images_per_second": rate})  # fmt: skip
        write_history(path, rows)
        state = {**read_state(self.run_dir), "stage": self.stage, "epoch": epoch + 1}
        write_state(self.run_dir, {**state, "status": "running"})


class EarlyStop(keras.callbacks.EarlyStopping):
    """Keras's early stopping on the validation loss, saying when it stops a stage (before,
    a run asked for 6 epochs stopped after 4 with no word, and its report claimed 6).

    ``patience`` 0 turns it off: every epoch asked for runs. Keras's 0 stopped at the first
    epoch without a lower loss, exactly as its 1 does, so 0 had no use of its own.

    Args:
        patience: epochs without a lower validation loss before the stage stops; 0: never.
        end_epoch: the stage's last epoch (1-based), for "stopped after epoch 4 of 6".
        best: the run's ``best.weights.h5``, whose epoch is the one kept (over every
            stage); None: this stage's best (``restore_best_weights`` puts it back).
        stream: where the line goes; None: nowhere.
    """

    def __init__(self, patience: int, end_epoch: int, best: Path | None = None,
                 stream: Any = None, **kwargs: Any):  # fmt: skip
        self.asked = int(patience)
        super().__init__(monitor="val_loss", patience=self.asked or sys.maxsize, **kwargs)
        self.end_epoch, self.best_path, self.stream = int(end_epoch), best, stream

    def on_train_end(self, logs=None) -> None:
        super().on_train_end(logs)
        if self.stopped_epoch > 0 and self.stream is not None:
            print(f"  {self.stop_line()}", file=self.stream, flush=True)

    def stop_line(self) -> str:
        """Why the stage ended before its last epoch, and which epoch the run keeps."""
        kept = read_best(self.best_path) if self.best_path is not None else None
        best = int(kept["epoch"]) if kept and kept.get("epoch") else self.best_epoch + 1
        return (f"stopped after epoch {self.stopped_epoch + 1} of {self.end_epoch}: validation "
                f"loss has not improved for {self.asked} epoch{'s' if self.asked != 1 else ''} "
                f"(--patience {self.asked}; 0: never stop early); the best, epoch {best}, is "
                "kept")  # fmt: skip


def prefix_sequences(parts: SplitModel, seqs, config: dict, run_dir: Path, progress: bool,
                      class_weight: dict | None = None, engine: str | None = None):  # fmt: skip
    """Train and validation batches through the stage's compiled prefix; validation (and
    training without augmentation) runs the prefix once and reuses its outputs."""
    forward = prefix_forward(parts.prefix, engine)  # on each local device for its shard (JAX)
    augment = None
    if config["augment"]:
        augment = random_affine(AugmentConfig(**config["augment"]), config["seed"])
    scratch = run_dir / "backup" / "prefix-outputs"
    out = []
    for name, aug in (("train", augment), ("validation", None)):
        bar = _precompute_bar(name, progress) if aug is None else None
        weights = class_weight if name == "train" else None
        regularise = RegulariseConfig.from_config(config)
        if regularise is not None and name == "validation":
            regularise = RegulariseConfig()  # one-hot targets, no mixing
        out.append(PrefixSequence(seqs[name], forward, aug, scratch=scratch, progress=bar,
                                  class_weight=weights, regularise=regularise,
                                  seed=config["seed"]))  # fmt: skip
    return out


def _precompute_bar(split: str, progress: bool):
    """A line when the prefix outputs of a split are computed (once per stage)."""
    if not progress:
        return None

    def report(done: int, total: int) -> None:
        if done == total:
            print(f"  {split}: frozen prefix computed once for {total} batch(es)", flush=True)

    return report
