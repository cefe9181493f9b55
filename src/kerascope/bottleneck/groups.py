"""One backbone's group in a feature work file: what to keep, reuse or compute, and computing it.

`_plan` compares a stored group with the dataset's rows (same files by SHA-1, same weights by
SHA-256): keep it, resume it, rebuild it reusing the rows whose files are unchanged, or start
new. `fill_group` carries the plan out batch by batch, features flushed before their ``done`` bits.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerascope import interrupts
from kerascope.bottleneck.branches import (
    FeatureCacheError,
    FeatureSpec,
    forward_for,
    weights_file,
)
from kerascope.bottleneck.store import SPLITS, Rows
from kerascope.files import (
    OutputError,
)
from kerascope.output import clean

_log = logging.getLogger(__name__)


def _plan(g: Any, rows: Rows, checksum: str) -> tuple[str, np.ndarray | None]:
    """``keep``, ``resume`` (same rows, some not done), ``rebuild`` (reuse by SHA-1) or ``new``."""
    if g is None or g.attrs.get("weights_sha256") != checksum:
        return "new", None
    done = g["done"][:]
    same = (
        json.loads(g.attrs["classes"]) == rows.classes
        and np.array_equal(g["sha1"][:], rows.sha1)
        and np.array_equal(g["label"][:], rows.labels)
        and np.array_equal(g["split"][:], rows.splits)
        and [p.decode() if isinstance(p, bytes) else p for p in g["path"][:]]
        == [clean(p) for p in rows.paths]
    )
    if same:
        return ("keep" if done.all() and g.attrs.get("complete") else "resume"), None
    old = {sha: i for i, sha in enumerate(g["sha1"][:]) if done[i]}
    return "rebuild", np.array([old.get(sha, -1) for sha in rows.sha1], np.int64)


def plan_groups(source: Path, specs: list, rows: Rows, sums: dict) -> dict | None:
    """Each spec's plan against the groups in ``source``; None when ``source`` cannot be read
    (truncated, not HDF5, a damaged group)."""
    import h5py

    try:
        with h5py.File(source, "r") as f:
            return {s: _plan(f.get(s.key), rows, sums[s]) for s in specs}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _new_group(f: Any, spec: FeatureSpec, rows: Rows, checksum: str, shape: tuple, batch: int):
    import h5py
    import keras

    import kerascope

    n = len(rows.paths)
    g = f.create_group(spec.key)
    chunks = (max(1, min(n, batch)), *shape) if n else None
    g.create_dataset("features", shape=(n, *shape), dtype="f4", chunks=chunks)
    g.create_dataset("done", data=np.zeros(n, bool))
    g.create_dataset("sha1", data=rows.sha1)
    # HDF5 strings are UTF-8: a name that is not is kept `clean` (it crashed the store)
    g.create_dataset("path", data=[clean(p) for p in rows.paths], dtype=h5py.string_dtype())
    g.create_dataset("label", data=rows.labels)
    g.create_dataset("split", data=rows.splits)
    meta = {
        "model": spec.backbone,
        "weights_file": str(weights_file(spec)),
        "weights_sha256": checksum,
        "layer": spec.layer or "",
        "pool": spec.pool,
        "input_size": spec.input_size,
        "image_size": spec.image_size,
        "classes": json.dumps(rows.classes),
        "splits": json.dumps(list(SPLITS)),
        "kerascope_version": kerascope.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": False,
    }
    g.attrs.update(meta)
    return g


def fill_group(f, spec, plan, rows, checksum, batch_size, progress) -> int:
    """Bring one group up to date in the working file; return the rows run through the model."""
    mode, reuse = plan
    n = len(rows.paths)
    if mode == "keep":
        return 0
    g = f.get(spec.key)
    run = None
    if mode == "resume":
        todo = np.flatnonzero(~g["done"][:])
    else:
        todo = np.arange(n) if reuse is None else np.flatnonzero(reuse < 0)
        kept = np.flatnonzero(reuse >= 0) if reuse is not None else np.zeros(0, np.int64)
        shape, old = None, None
        if len(kept):
            uniq, inverse = np.unique(reuse[kept], return_inverse=True)
            old, shape = g["features"][uniq][inverse], g["features"].shape[1:]
        if g is not None:
            _warn_replaced(f, spec, g, rows)
            del f[spec.key]
        if len(todo):
            run, shape = forward_for(spec)
        _check_space(f, len(todo), tuple(shape or ()))
        g = _new_group(f, spec, rows, checksum, tuple(shape or ()), batch_size)
        if len(kept):
            g["features"][kept] = old
            g["done"][kept] = True
    f.flush()
    done = n - len(todo)
    if progress is not None:
        progress(spec.backbone, done, n)
    if len(todo):
        if mode == "resume":
            _check_space(f, len(todo), g["features"].shape[1:])
        run = run or forward_for(spec)[0]
        done = _compute(f, g, spec, run, rows, todo, batch_size, progress, done)
    f.flush()  # ``complete`` is set by `_finish`, once the rows are verified on disk
    return len(todo)


def _warn_replaced(f: Any, spec: FeatureSpec, g: Any, rows: Rows) -> None:
    """Say so when most of a group's rows belong to images this dataset lacks: a store holds
    one dataset's features, and a second dataset written into it replaces the first's (by
    file content: new weights or a changed image recompute rows, they replace nothing)."""
    stored = g["sha1"][:][g["done"][:]]
    dropped = int((~np.isin(stored, rows.sha1)).sum())
    if dropped and dropped * 2 > len(stored):
        name = Path(f.filename).name.removesuffix(".partial")
        _log.warning(
            "%s held %s features of %d images that are not in this dataset; they are replaced "
            "by this dataset's (a feature file holds one dataset: give another -o to keep both)",
            name, spec.backbone, dropped,
        )  # fmt: skip


def _check_space(f: Any, todo: int, shape: tuple) -> None:
    """Refuse before writing rows that cannot fit: HDF5 left with a failed write may crash the
    process later (at exit), so a disk that is already too full is caught here, in Python.
    A disk filled by someone else during the run is still caught by `_h5_errors`."""
    needed = todo * int(np.prod(shape, dtype=np.int64)) * 4 + (1 << 20)  # float32 + metadata
    partial = Path(f.filename)
    free = shutil.disk_usage(partial.parent).free
    if needed > free:
        out = partial.with_name(partial.name.removesuffix(".partial"))
        raise OutputError(
            f"could not write '{out}': no space left on the device (about "
            f"{needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free); free some space and run "
            "again (any previous file is kept)"
        )


def _compute(f, g, spec, run, rows, todo, batch_size, progress, done) -> int:
    """Forward the ``todo`` rows batch by batch, flushing features before their ``done`` bits."""
    from kerascope.sources import iter_batches

    size = (spec.image_size, spec.image_size)
    sources = [rows.paths[i] for i in todo]
    # Held open, so each flush writes (and checks) their cached chunks; a temporary dataset
    # would write them on release, where h5py can only print the error.
    features, marks = g["features"], g["done"]
    for start, items in zip(
        range(0, len(todo), batch_size), iter_batches(sources, size, batch_size), strict=True
    ):
        interrupts.check()  # a Ctrl-C swallowed in a finalizer (`kerascope.interrupts`)
        bad = [it for it in items if it.error is not None]
        if bad:
            raise FeatureCacheError(
                f"cannot read '{bad[0].source}': {bad[0].error} (leave it out with skip_bad=True)"
            )
        chunk = todo[start : start + batch_size]
        features[chunk] = run(np.stack([it.pixels for it in items]))
        f.flush()
        marks[chunk] = True
        f.flush()
        done += len(chunk)
        if progress is not None:
            progress(spec.backbone, done, len(rows.paths))
    return done
