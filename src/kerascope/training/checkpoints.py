"""The per-epoch files a run keeps while it trains, each written so that a kill or a full disk at
any moment leaves a consistent set behind.

* ``backup/stage<N>/``: weights and optimizer (``epoch<E>.weights.h5``), the random layers'
  seed states (``epoch<E>.seeds.npz``), then ``training_metadata.json`` naming both: that last
  atomic rename is the commit. Keras's ``BackupAndRestore`` writes its weights and its epoch
  as two plain writes, so a kill between them resumed epoch E's weights as epoch E-1's.
* ``best.weights.h5``: the weights with the lowest validation loss so far, with that epoch's
  numbers stored inside the same file (an HDF5 attribute), so what the run reports as its
  saved model is by construction the epoch whose weights it saves.
* ``best.trained.npz``: in a split stage (frozen prefix), a later best epoch of the same stage
  writes only the variables the stage trains, with its numbers and the token of the
  ``best.weights.h5`` it completes; the prefix cannot have changed since that file. The whole
  network of a two-backbone ensemble was ~0.45 s per improving epoch, most of a ``features``
  epoch; one stale (another token) is ignored. `load_best` and `read_best` read the pair.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerascope.errors import RunError
from kerascope.files import atomic_open, write_bytes, write_json
from kerascope.keras_saving import fast_keras_saving

META = "training_metadata.json"
BEST_ATTR = "kerascope_best"
TRAINED_PART = "best.trained.npz"  # beside best.weights.h5


def backup_epoch(folder: Path) -> int | None:
    """The epoch a stage's backup resumes after, or None without a (complete) backup."""
    meta = _backup_meta(folder)
    return None if meta is None else int(meta["epoch"])


def _backup_meta(folder: Path) -> dict[str, Any] | None:
    """The backup's commit record; None where there is none. A damaged one is an error: read
    as "no backup", the stage silently started again from its first epoch."""
    path = folder / META
    try:
        meta = json.loads(path.read_text())
        int(meta["epoch"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = exc if isinstance(exc, OSError) else "not the JSON of a finished epoch"
        raise damaged_backup(path, reason) from None
    meta.setdefault("weights", "latest.weights.h5")  # written by Keras's BackupAndRestore
    meta.setdefault("seeds", "seeds.npz")
    return meta


def damaged_backup(path: Path, why: BaseException | str) -> RunError:
    """One line for a backup file that cannot be read, and how to go on without it."""
    reason = (str(why).strip().splitlines() or [type(why).__name__])[0][:200]
    folder = path.parent
    return RunError(f"the run's backup '{path}' is damaged ({reason}): remove the folder "
                    f"'{folder}' to train {folder.name.replace('stage', 'stage ')} again from "
                    f"its first epoch, then continue with `kerascope train --resume "
                    f"{folder.parent.parent}`")  # fmt: skip


def backup_trainer(folder: Path) -> str | None:
    """How a stage's backup was trained: "split" (the head after a frozen prefix) or "whole"
    (the whole graph in Keras); None without a backup, or one made before this was kept."""
    meta = _backup_meta(folder)
    return None if meta is None else meta.get("trainer")


def trainer_mismatch(folder: Path, kept: str) -> RunError:
    """One line for an engine asked for that cannot load the stage's backup."""
    stage = folder.name.replace("stage", "stage ")
    how = ("split (the frozen prefix on onnxruntime or OpenVINO)" if kept == "split"
           else "as one graph in Keras")  # fmt: skip
    return RunError(f"{stage}'s backup '{folder}' was trained {how}, which the engine asked for "
                    "now (engine=/KERASCOPE_ENGINE) does not do: resume without it, or remove "
                    f"the folder to train {stage} again from its first epoch")  # fmt: skip


class Backup(keras.callbacks.Callback):
    """Saves the trained model's weights, optimizer and seed states after every epoch and
    restores them when a stage starts again; nothing is deleted here (the run removes a
    stage's backup once the stage is marked complete). ``trainer`` ("split" or "whole") is
    recorded: only the same trainer can load it (`backup_trainer`)."""

    def __init__(self, folder: str | os.PathLike, trainer: str = "whole"):
        super().__init__()
        self.folder = Path(folder)
        self.trainer = trainer

    def _seed_states(self) -> list:
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None) -> None:
        meta = _backup_meta(self.folder)
        if meta is None:
            return
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # its slots must exist to load
        fast_keras_saving()
        weights = self.folder / meta["weights"]
        try:
            self.model.load_weights(weights)
        except (OSError, ValueError, KeyError) as exc:  # truncated, or not this model's
            raise damaged_backup(weights, exc) from None
        seeds = self.folder / meta["seeds"]
        states = self._seed_states()
        if seeds.is_file():
            try:
                with np.load(seeds) as arrays:
                    if len(arrays.files) == len(states):
                        for i, v in enumerate(states):
                            v.assign(arrays[f"s{i}"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                raise damaged_backup(seeds, "not a complete .npz file") from None
        self.model._initial_epoch = int(meta["epoch"])

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        done = epoch + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        weights, seeds = f"epoch{done}.weights.h5", f"epoch{done}.seeds.npz"
        write_bytes(self.folder / weights, weights_h5(self.model))
        states = {f"s{i}": keras.ops.convert_to_numpy(v) for i, v in
                  enumerate(self._seed_states())}  # fmt: skip
        with atomic_open(self.folder / seeds, "wb") as handle:
            np.savez(handle, **states)
        write_json(self.folder / META, {"epoch": done, "batch": 0, "weights": weights,
                                        "seeds": seeds, "trainer": self.trainer})  # fmt: skip
        for old in self.folder.iterdir():
            if old.is_file() and old.name.startswith("epoch") and old.name not in (weights, seeds):
                old.unlink(missing_ok=True)


def read_best(path: str | os.PathLike) -> dict[str, Any] | None:
    """The numbers of the best epoch: of its ``best.trained.npz`` when that completes
    ``best.weights.h5`` at ``path``, else of ``path`` itself (None: no such file, or one
    written before kerascope recorded them)."""
    base = _base_meta(Path(path))
    if base is None:
        return None
    part = _trained_part(Path(path), base)
    return part[0] if part is not None else base


def load_best(model: Any, path: str | os.PathLike) -> None:
    """Put the best epoch's weights in ``model``: ``best.weights.h5`` at ``path``, then the
    variables its ``best.trained.npz`` holds (by their index in ``model.weights``)."""
    from kerascope.errors import RunError

    path = Path(path)
    fast_keras_saving()
    model.load_weights(path)
    base = _base_meta(path)
    part = _trained_part(path, base) if base is not None else None
    if part is None:
        return
    meta, values = part
    weights = model.weights
    if meta.get("count") != len(weights) or any(
        i >= len(weights) or tuple(weights[i].shape) != v.shape for i, v in values.items()
    ):
        part = path.with_name(TRAINED_PART)
        raise RunError(f"'{part}' does not fit this run's network: delete it to resume from "
                       "the best epoch of best.weights.h5 alone")  # fmt: skip
    for i, value in values.items():
        weights[i].assign(value)


def _base_meta(path: Path) -> dict[str, Any] | None:
    import h5py

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs[BEST_ATTR])
    except (OSError, KeyError, ValueError):
        return None


def _trained_part(path: Path, base: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[int, np.ndarray]] | None:  # fmt: skip
    """``best.trained.npz``'s numbers and values, when it completes the base file ``base``
    describes (same token); None otherwise (absent, stale, or cut short)."""
    part = path.with_name(TRAINED_PART)
    if base.get("token") is None or not part.is_file():
        return None
    try:
        with np.load(part, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            if meta.get("token") != base["token"]:
                return None
            values = {int(k[1:]): arrays[k] for k in arrays.files if k.startswith("w")}
    except (OSError, KeyError, ValueError):
        return None
    return meta, values


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the whole network's weights of the epoch with the lowest ``monitor`` so far (over
    every stage of the run), with that epoch's logs inside the file. The whole network, not the
    trained model: a split stage fits only the suffix, which shares the network's variables.

    ``frozen_prefix``: the stage trains only ``self.model`` (a split stage's suffix), so after
    its first whole-network file a better epoch writes just the trained variables
    (``best.trained.npz``, see the module's docstring)."""

    def __init__(self, full_model: Any, path: str | os.PathLike, monitor: str = "val_loss",
                 frozen_prefix: bool = False):  # fmt: skip
        super().__init__()
        self.full, self.path, self.monitor = full_model, Path(path), monitor
        self.frozen_prefix = frozen_prefix
        self._token: str | None = None  # of the whole-network file this process wrote
        best = read_best(self.path)
        self.best = float(best[monitor]) if best and best.get(monitor) is not None else math.inf

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        meta = {"epoch": epoch + 1, **{k: _plain(logs.get(k)) for k in
                ("loss", "accuracy", "val_loss", "val_accuracy")}}  # fmt: skip
        part = self.path.with_name(TRAINED_PART)
        if self._token is not None:
            self._write_trained(part, {**meta, "token": self._token})
        else:
            token = secrets.token_hex(8)
            write_bytes(self.path, weights_h5(self.full, {**meta, "token": token}))
            part.unlink(missing_ok=True)  # completed another file: stale already
            self._token = token if self.frozen_prefix else None
        self.best = float(value)

    def _write_trained(self, part: Path, meta: dict[str, Any]) -> None:
        weights = self.full.weights
        index = {id(v): i for i, v in enumerate(weights)}
        trained = sorted({index[id(v)] for v in self.model.weights if id(v) in index})
        arrays = {f"w{i}": keras.ops.convert_to_numpy(weights[i]) for i in trained}
        meta["count"] = len(weights)
        with atomic_open(part, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


class _Memory(io.BytesIO):
    """An in-memory ``.weights.h5`` for Keras (which checks the name's suffix)."""

    def __str__(self) -> str:
        return "memory.weights.h5"


def weights_h5(model: Any, meta: dict[str, Any] | None = None) -> bytes:
    """``model.save_weights`` as bytes, built in memory: HDF5 never writes to the disk itself,
    so a full disk fails in one plain write (`kerascope.files`) instead of halfway through
    HDF5's own writes, which left open handles that crashed the interpreter at exit."""
    import h5py
    from keras.src.saving import saving_lib

    fast_keras_saving()
    buffer = _Memory()
    saving_lib.save_weights_only(model, buffer)
    if meta is not None:
        with h5py.File(buffer, "a") as f:
            f.attrs[BEST_ATTR] = json.dumps(meta)
    return buffer.getvalue()


def _plain(value: Any) -> float | None:
    return None if value is None else float(value)
