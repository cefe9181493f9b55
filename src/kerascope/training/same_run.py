"""Every process of a multi-process run checks that the others train the same run: the same
settings (:func:`check_same_options`, naming the option that differs) and the same images
(:func:`check_same_data`). Compared by checksum across the processes, before anything is
written; a difference stops every process with the same line (issue 19)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.errors import ConfigError  # noqa: E402
from kerascope.training.starting import start_together  # noqa: E402

# The settings every process must share (its data path and output may differ per machine).
# "stages" and "augment" are compared field by field (_entries), so the line names the option.
SHARED = ("recipe", "backbone", "layer", "pool", "image_size", "batch_size", "stages", "seed",
          "val_split", "skip_bad", "class_weight", "unfreeze", "augment", "head", "dropout",
          "patience", "precision", "label_smoothing", "mixup", "cutmix")  # fmt: skip
# A stage's fields and their option, compared in this order: an optimizer brings its own
# default rate, so --optimizer sgd alone is named as such, not as --lr.
STAGE_FLAGS = (("optimizer", "--optimizer"), ("momentum", "--momentum"),
               ("schedule", "--lr-schedule"), ("lr", "--lr"), ("epochs", "--epochs"))  # fmt: skip

_asked: dict[str, int] = {}  # what this process was started with: {"num_processes": N}


def remember_processes(num_processes: int) -> None:
    """The ``--num-processes`` this process joined with (JAX takes process 0's count, so a
    process given another one trained without a word; :func:`check_same_options` compares
    it)."""
    _asked["num_processes"] = int(num_processes)


def _entries(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(option, value)`` for every compared setting, the same list in every process."""
    from kerascope.training.resume import FLAGS, _augment_flag
    from kerascope.training.settings import NO_AUGMENT, augment_record

    entries: list[tuple[str, Any]] = [("--num-processes", _asked.get("num_processes"))]
    for key in SHARED:
        if key == "stages":
            stages = config.get("stages") or []
            entries += [(flag, [s.get(field) for s in stages]) for field, flag in STAGE_FLAGS]
            rest = [{k: v for k, v in s.items() if k not in dict(STAGE_FLAGS)} for s in stages]
            entries.append(("stage setting (--recipe, --unfreeze or a per-stage option)", rest))
        elif key == "augment":
            augment = config.get("augment")
            entries.append(("--no-augment", augment is None))
            for name in augment_record(NO_AUGMENT):  # its fields: --rotation, --no-flip ...
                flag = _augment_flag(name, False).split()[0]
                entries.append((flag, None if augment is None else augment.get(name)))
        else:
            entries.append((FLAGS.get(key, "--" + key.replace("_", "-")), config.get(key)))
    devices = config.get("devices") or {}
    entries.append(("--devices", devices.get("count")))
    return entries


def check_same_options(config: dict[str, Any]) -> None:
    """Every process of a run refuses, naming the option, when any process was started with
    other settings than process 0: they would otherwise train different models in lockstep
    (or wait on each other until JAX's heartbeat aborts them)."""
    entries = _entries(config)
    differs = _differing([value for _, value in entries], "options")
    if differs is not None:
        process, index = differs
        raise ConfigError(f"process {process} was started with another {entries[index][0]} "
                          "than process 0: start every process with the same options (only "
                          "--process-id differs)")  # fmt: skip


def check_same_data(dataset: Any) -> None:
    """Every process refuses when any reads other images than process 0 (names relative to
    the data folder, sizes, classes, split): a copy short of one image trained in lockstep
    on other batches, and process 0's split.json described a run that did not happen."""
    import os

    root = str(dataset.root)
    try:
        listing = {split: [(os.path.relpath(p, root), os.path.getsize(p), label)
                           for p, label in pairs]
                   for split, pairs in sorted(dataset.splits.items())}  # fmt: skip
    except OSError as exc:  # removed since the scan
        raise ConfigError(f"cannot read '{exc.filename}' of the dataset: {exc.strerror}; "
                          "leave the DATA folder as it is while training") from None  # fmt: skip
    differs = _differing([dataset.classes, listing], "data")
    if differs is not None:
        what = "classes" if differs[1] == 0 else "images (names, sizes or split)"
        raise ConfigError(f"process {differs[0]} reads other {what} than process 0 in "
                          "its DATA folder: give every process the same copy of the "
                          "dataset")  # fmt: skip


def _differing(values: list[Any], phase: str) -> tuple[int, int] | None:
    """(process, index of the first value) where a process's ``values`` differ from process
    0's, compared by checksum across the processes; None when all agree or one process runs."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    if jax.process_count() == 1:
        return None
    start_together(phase)  # a process refused before this: told, not waited for
    import json
    import zlib

    from jax.experimental import multihost_utils

    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    mine = np.array([zlib.crc32(json.dumps(plain(v), sort_keys=True, default=str).encode())
                     & 0x7FFFFFFF for v in values], np.int32)  # fmt: skip
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    for process, theirs in enumerate(every[1:], start=1):
        for index, (a, b) in enumerate(zip(every[0], theirs, strict=True)):
            if a != b:
                return process, index
    return None
