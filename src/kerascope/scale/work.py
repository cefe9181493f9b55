"""The worker: a callable class that loads the model once and turns one block into one shard.

Ray Data runs it in an actor pool (``map_batches``), and the in-process mode calls it directly,
so both run the same code, and it is kerascope's own: `classify_sources`, the feature forward
of `kerascope.bottleneck`, `iter_unplaced` and the overlay drawing of ``explain``. Decoding
happens here, on the worker (the inference core's thread pool overlaps it with the model).

A block's rows are written as one Parquet file under a temp name, then renamed
(`kerascope.files.atomic_path`): a worker killed mid-block leaves no shard, and the block's
retry writes the same file again. A block whose shard exists is not recomputed. Bad images
become error rows; only a setup error (unknown model, layer or class) stops the job, reported
back as ``fatal`` so the driver can print it as one line.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerascope import files
from kerascope.errors import KerascopeError
from kerascope.scale.plan import shard_dir

META_KEY = b"kerascope"


def _pa():
    import pyarrow as pa

    return pa


def summary_schema():
    pa = _pa()
    return pa.schema(
        [
            ("block", pa.int64()),
            ("shard", pa.string()),
            ("inputs", pa.int64()),
            ("errors", pa.int64()),
            ("skipped", pa.bool_()),
            ("fatal", pa.string()),
            ("host", pa.string()),
            ("pid", pa.int64()),
        ]
    )


def _clean(text: str | None) -> str | None:
    from kerascope.output import clean

    return None if text is None else clean(str(text))


def provenance() -> dict[str, Any]:
    """Which software and which process wrote a shard (kept in its Parquet metadata)."""
    import keras

    import kerascope

    return {
        "kerascope_version": kerascope.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


class BlockWorker:
    """``worker(batch)``: each row of ``batch`` is a `Block` row; returns one summary per row.

    Args:
        job: ``task``, ``output`` (folder), ``settings`` (the task's options) and
            ``batch_size`` (None: `kerascope.batch_sizes.default_batch_size` for the device
            this worker runs on), as plain data (it travels to every actor).
    """

    JOB: dict[str, Any] | None = None  # set on a subclass by the Ray driver
    OWN_PROCESS = False
    """Set on the Ray driver's subclass: an actor is a process of kerascope's own, so it runs
    with the command's process settings (`kerascope.config.command_process_settings`);
    in-process, the caller's program keeps its own."""

    def __init__(self, job: dict[str, Any] | None = None):
        if self.OWN_PROCESS:
            from kerascope.config import command_process_settings

            command_process_settings()
        job = job if job is not None else self.JOB
        self.task = job["task"]
        self.out = Path(job["output"])
        self.folder = shard_dir(self.out, self.task)
        self.settings = job["settings"]
        # actors on this machine at most (`run.actors_per_machine`): each keeps its share of
        # the decodes' memory bound
        self.neighbours = max(1, min(int(job.get("actors", 1)), os.cpu_count() or 1))
        self.fatal: str | None = None
        self.batch_size = 0
        try:
            from kerascope.batch_sizes import batch_size_or_default

            self._setup()
            work = "explain" if self.task == "explain" else "classify"
            side = self.spec.input_size if self.task == "features" else None
            size = (side, side) if side else self.clf.input_size
            # this device's, for this model's input (`kerascope.batch_sizes`: one rule)
            self.batch_size = batch_size_or_default(job.get("batch_size"), work, size)
        except (KerascopeError, ValueError, OSError) as exc:
            self.fatal = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    @classmethod
    def for_actors(cls, job: dict[str, Any]) -> type[BlockWorker]:
        """The class Ray Data builds its actors from: ``job`` travels inside it (pickled by
        value), and each actor runs with the command's process settings."""
        return type(cls.__name__, (cls,), {"JOB": job, "OWN_PROCESS": True})

    def _setup(self) -> None:
        s = self.settings
        asked = s.get("precision")  # None: KERASCOPE_PRECISION or auto, on this worker's device
        if self.task == "features":
            from kerascope.bottleneck import FeatureSpec, forward_for, weights_checksum
            from kerascope.bottleneck.branches import weights_file

            self.spec = FeatureSpec.make(s["model"], s["layer"], s["pool"], s["image_size"],
                                         s["weights"])  # fmt: skip
            self.forward, self.shape = forward_for(self.spec, asked)
            self.meta = {
                "model": self.spec.backbone,
                "layer": self.spec.layer or "",
                "pool": self.spec.pool,
                "image_size": self.spec.image_size,
                "input_size": self.spec.input_size,
                "shape": list(self.shape),
                "weights_file": str(weights_file(self.spec)),
                "weights_sha256": weights_checksum(weights_file(self.spec)),
                "precision": self.forward.precision,
            }
            return
        from kerascope.classification import run_precision
        from kerascope.zoo.models import load_model

        self.clf = load_model(s["model"], weights=s.get("weights"), precision=asked)
        self.meta = {"model": self.clf.name, "model_source": self.clf.source,
                     "precision": run_precision(self.clf)}  # fmt: skip
        if self.task == "explain":
            from kerascope.cam.explain import _cached_explainer, resolve_target
            from kerascope.cam.groups import class_or_group

            self.clf, target = class_or_group(self.clf, s["target"])  # "cat": a WordNet group
            self.explainer = _cached_explainer(self.clf, s["method"], s["layer"], precision=asked)
            self.target = None if target is None else resolve_target(self.clf, target)
            self.meta.update(method=self.explainer.method, layer=self.explainer.layer,
                             precision=self.explainer.precision)  # fmt: skip

    def __call__(self, batch: Any) -> Any:
        rows = batch.to_pylist() if hasattr(batch, "to_pylist") else list(batch)
        return _pa().Table.from_pylist([self.run_block(r) for r in rows], schema=summary_schema())

    def run_block(self, row: dict[str, Any]) -> dict[str, Any]:
        """Write the block's shard unless it exists; a summary either way."""
        done = {"block": row["block"], "shard": row["shard"], "inputs": len(row["paths"]),
                "errors": 0, "skipped": False, "fatal": self.fatal,
                "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip
        if self.fatal:
            return done
        path = self.folder / row["shard"]
        info = shard_check(path, row["block"], len(row["paths"]))
        if info is not None:  # a retry of a block whose shard was written: nothing to redo
            return dict(done, skipped=True, errors=info.get("errors", 0))
        try:
            table, errors = getattr(self, f"_{self.task}")(row)
            meta = {"task": self.task, "settings": self.settings, "block": row["block"],
                    "inputs": len(row["paths"]), "errors": errors, **self.meta,
                    **provenance()}  # fmt: skip
            table = table.replace_schema_metadata({META_KEY: json.dumps(meta)})
            write_shard(table, path)
        except KerascopeError as exc:  # disk full, read-only output: the job cannot go on
            return dict(done, fatal=str(exc).splitlines()[0])
        return dict(done, errors=errors)

    def _sources(self, row: dict[str, Any]) -> list:
        from kerascope.sources import Missing

        return [Missing(p) if m else p for p, m in zip(row["paths"], row["missing"], strict=True)]

    def _classify(self, row: dict[str, Any]):
        from kerascope.classification import called_labels, classify_sources

        s = self.settings
        cols: dict[str, list] = {k: [] for k in CLASSIFY_COLUMNS}
        errors = 0
        top = self.clf.num_classes if self.clf.extra.get("multilabel") else s["top"]
        found = called_labels(self.clf, classify_sources(
            self.clf, self._sources(row), top, s["threshold"], self.batch_size))  # fmt: skip
        for r in found:
            if not r.ok:
                errors += 1
                _append(cols, _clean(r.source), None, None, None, None, _clean(r.error))
            for p in r.predictions:
                _append(cols, _clean(r.source), p.rank, _clean(p.class_id), _clean(p.name),
                        p.probability, None)  # fmt: skip
        return _pa().table(cols, schema=classify_schema()), errors

    def _features(self, row: dict[str, Any]):
        from kerascope.sources import iter_batches

        size = (self.spec.image_size, self.spec.image_size)
        dim = int(np.prod(self.shape))
        images, vectors, errs = [], [], []
        for items in iter_batches(self._sources(row), size, self.batch_size):
            good = [it for it in items if it.error is None]
            pixels = np.stack([it.pixels for it in good]) if good else None
            out = None if pixels is None else self.forward(pixels, self.batch_size)  # its bucket
            k = 0
            for it in items:
                images.append(_clean(it.source))
                errs.append(_clean(it.error))
                if it.error is None:
                    vectors.append(np.asarray(out[k], np.float32).reshape(-1).tolist())
                    k += 1
                else:
                    vectors.append(None)
        table = _pa().table(
            {"image": images, "vector": vectors, "error": errs}, schema=features_schema(dim)
        )
        return table, sum(e is not None for e in errs)

    def _explain(self, row: dict[str, Any]):
        from kerascope.cam.explain import iter_unplaced
        from kerascope.cam.fitting import place
        from kerascope.cam.save import draw_explanation, picture_source
        from kerascope.sources import kept_pixels

        s = self.settings
        sources = self._sources(row)
        targets = None if self.target is None else np.full(len(sources), self.target)
        cols: dict[str, list] = {k: [] for k in EXPLAIN_COLUMNS}
        errors = 0
        keep = kept_pixels(self.batch_size) // self.neighbours  # each file decoded once, if it can
        found = iter_unplaced(self.clf, self.explainer, sources, targets, self.batch_size,
                              keep_up_to=keep, fit=s.get("fit", "whole"))  # fmt: skip
        for source, name, (e, cam, item) in zip(sources, row["outputs"], found, strict=True):
            if e.ok:  # the picture single-machine `explain` writes, drawn by the same code
                e = draw_explanation(picture_source(source, item), place(cam, e.box, item.shape),
                                     e, s["method"], s["alpha"], s["colormap"],
                                     self.out / name)  # fmt: skip
            if not e.ok:
                errors += 1
                _append(cols, _clean(e.source), None, None, None, None, None, None,
                        _clean(e.error))  # fmt: skip
                continue
            _append(cols, _clean(e.source), e.class_index, _clean(e.class_id),
                    _clean(e.class_name), e.probability, e.class_specific, name,
                    None)  # fmt: skip
        return _pa().table(cols, schema=explain_schema()), errors


CLASSIFY_COLUMNS = ("image", "rank", "class_id", "name", "probability", "error")
EXPLAIN_COLUMNS = ("image", "class_index", "class_id", "name", "probability", "class_specific",
                   "output", "error")  # fmt: skip
"""``class_specific`` is false for a map that is the same for every class (eigencam): ``name``
is then the top class, which the map is not about (`kerascope.cam.explanation.Explanation`)."""


def _append(cols: dict[str, list], *values) -> None:
    for column, value in zip(cols.values(), values, strict=True):
        column.append(value)


def classify_schema():
    """The columns of ``classify --format csv``, typed: empty cells are nulls."""
    pa = _pa()
    return pa.schema([("image", pa.string()), ("rank", pa.int32()), ("class_id", pa.string()),
                      ("name", pa.string()), ("probability", pa.float64()),
                      ("error", pa.string())])  # fmt: skip


def features_schema(dim: int):
    pa = _pa()
    return pa.schema([("image", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
                      ("error", pa.string())])  # fmt: skip


def explain_schema():
    pa = _pa()
    return pa.schema([("image", pa.string()), ("class_index", pa.int32()),
                      ("class_id", pa.string()), ("name", pa.string()),
                      ("probability", pa.float64()), ("class_specific", pa.bool_()),
                      ("output", pa.string()), ("error", pa.string())])  # fmt: skip


def write_shard(table: Any, path: Path) -> None:
    """All of the block's rows, or nothing: temp name, fsync, rename."""
    import pyarrow.parquet as pq

    with files.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def shard_info(path: str | os.PathLike) -> dict[str, Any]:
    """The kerascope metadata of a shard (settings, provenance, counts), from its footer only."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(META_KEY, b"{}"))


def shard_check(path: Path, block: int, inputs: int) -> dict[str, Any] | None:
    """A shard's metadata when ``path`` is a whole shard of block ``block`` (its footer reads
    and names that block, its number of inputs and at least as many rows); None when there is
    no such file, or it is cut short or not this block's: such a block is computed again.

    The footer is the end of the file, so a file cut anywhere fails here without its rows
    being read (damage inside a whole file would need a full read, which this does not do).
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
        info = json.loads((meta.metadata or {}).get(META_KEY, b"{}"))
        if info.get("block") != block or info.get("inputs") != inputs or meta.num_rows < inputs:
            return None
    except Exception:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, ... for bad files)
        return None
    return info


def lacking_columns(folder: Path, task: str, blocks: list, todo: list) -> list[str]:
    """The columns this kerascope writes for ``task`` that the job's shards lack, when blocks
    are left to write (one written shard's schema read): a resume would mix two layouts, and
    readers take the first shard's schema (explain's ``class_specific`` vanished from every
    row of a job started by an older kerascope and finished by this one, without a word)."""
    import pyarrow.parquet as pq

    if task != "explain" or not todo:
        return []
    left = {b.shard for b in todo}
    written = [b for b in blocks if b.shard not in left]
    if not written:
        return []
    try:
        names = set(pq.read_schema(folder / written[0].shard).names)
    except Exception:  # noqa: BLE001  (an unreadable shard is `remove_damaged`'s)
        return []
    return [c for c in EXPLAIN_COLUMNS if c not in names]


def unfinished(folder: Path, blocks: list) -> list:
    """The ``blocks`` with no whole shard in ``folder`` (none yet, or a damaged one: see
    `shard_check`); reads footers only, writes nothing."""
    return [b for b in blocks if shard_check(folder / b.shard, b.index, len(b.paths)) is None]


def remove_damaged(folder: Path, blocks: list) -> list[str]:
    """Delete the shards of ``blocks`` in ``folder`` that exist but are not whole (see
    `shard_check`), so that their blocks run again; their names. Only the job's own shard
    names are looked at, in a folder that holds this job (the manifest says so)."""
    damaged = []
    for b in blocks:
        path = folder / b.shard
        if path.is_file() and shard_check(path, b.index, len(b.paths)) is None:
            try:
                path.unlink()
            except OSError as exc:
                raise files.output_error(path, exc) from None
            damaged.append(b.shard)
    return damaged
