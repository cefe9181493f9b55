"""Bottleneck features: what a zoo backbone sees in each image, computed once and cached in HDF5.

Training a small head on stored features (the seed's ``gap_%s.h5``) is minutes instead of hours,
but only if the store never lies: every row is keyed by the SHA-1 of its file's bytes (cheap next
to a forward pass), every group records the SHA-256 of the weights and the settings that made it,
so a changed image, weights file or setting recomputes only what it affects. Work happens in
``features.h5.partial`` with a per-row ``done`` mask flushed every batch; only a finished run is
renamed to ``features.h5``, so a killed run resumes and never leaves a file that reads complete.
One process writes an output at a time: it holds ``.features.h5.lock`` (``flock``, dropped by
the kernel however the process ends), and a second run on the same output is refused in one
line instead of deleting the first one's work file (both failed). A ``features.h5`` that is
not a readable HDF5 file (truncated, or some other file) is refused in one line, never replaced.

A branch is ``Input(image_size) -> Resizing(backbone size) -> backbone [-> layer] -> pool``; the
``features`` recipe's model (``train.recipes``) is built from the same branches, so cached
features and the saved model agree by construction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.bottleneck.branches import (
    FeatureCacheError,
    FeatureSpec,
    forward_for,
    weights_checksum,
    weights_file,
    weights_per_backbone,
)
from kerascope.files import (
    OutputError,
    fsync_dir,
    fsync_path,
    is_disk_error,
    output_error,
    temp_name,
)
from kerascope.locks import LockBusy, acquire

SPLITS = ("train", "validation", "test")
FORMAT = 1
Progress = Callable[[str, int, int], None]  # (backbone, rows done, rows in all)


@dataclass
class Rows:
    """One entry per dataset image, in split order; ``sha1`` keys its features."""

    paths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    sha1: np.ndarray
    classes: list[str]

    @classmethod
    def of(cls, dataset: Any) -> Rows:
        items = [(p, y, SPLITS.index(s)) for s in SPLITS for p, y in dataset.splits.get(s, [])]
        paths = [str(p) for p, _, _ in items]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
            sha = list(pool.map(lambda p: hashlib.sha1(Path(p).read_bytes()).hexdigest(), paths))
        return cls(
            paths,
            np.array([y for _, y, _ in items], np.int32),
            np.array([s for _, _, s in items], np.uint8),
            np.array(sha, dtype="S40"),
            list(dataset.classes),
        )


@dataclass
class FeatureSet:
    """Features of one group (optionally one split) with what is needed to train on them."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    splits: np.ndarray  # split name per row
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> FeatureSet:
        keep = np.flatnonzero(self.splits == name)
        paths = [self.paths[i] for i in keep]
        sub = (self.features[keep], self.labels[keep], paths, self.splits[keep])
        return FeatureSet(*sub, self.classes, self.info)


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


class FeatureStore:
    """Read side of a feature file; refuses groups an interrupted extraction left unfinished.

    ``computed`` maps each group key to the rows the extraction that returned this store
    actually ran through a backbone (0 when everything came from the cache).
    """

    def __init__(self, path: str | os.PathLike, computed: dict[str, int] | None = None):
        self.path = Path(path)
        self.computed = dict(computed or {})
        if self.path.is_dir():
            raise FeatureCacheError(f"'{self.path}' is a folder, not a feature file")
        if not self.path.is_file():
            again = " run extract_features again to finish it"
            if partial_path(self.path).is_file():
                raise FeatureCacheError(
                    f"'{self.path}' is not complete: an extraction was interrupted (its progress "
                    f"is in '{partial_path(self.path)}');{again}"
                )
            raise FeatureCacheError(
                f"no feature file '{self.path}' (make it with extract_features)"
            )

    @contextmanager
    def _open(self) -> Iterator[Any]:
        """The file, read-only; a file HDF5 cannot open or read (truncated, not HDF5) is one
        line naming it."""
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                yield f
        except OSError as exc:
            raise FeatureCacheError(_unreadable(self.path, exc)) from None

    def row_shape(self, key: str) -> tuple[int, ...]:
        """The shape of one image's features in group ``key`` (``(4, 4, 512)`` unpooled)."""
        with self._open() as f:
            return tuple(int(d) for d in f[key]["features"].shape[1:])

    def keys(self) -> list[str]:
        with self._open() as f:
            return sorted(f)

    def info(self, key: str) -> dict[str, Any]:
        with self._open() as f:
            return {k: _attr(v) for k, v in f[key].attrs.items()}

    def load(
        self,
        backbone: str,
        layer: str | None = None,
        pool: str = "avg",
        image_size: int | None = None,
        split: str | None = None,
    ) -> FeatureSet:
        """The features of one group; ``backbone`` may also be a full key from ``keys()``."""
        key = (
            backbone if "," in backbone else FeatureSpec.make(backbone, layer, pool, image_size).key
        )
        with self._open() as f:
            if key not in f:
                held = ", ".join(k for k in f) or "nothing"
                raise FeatureCacheError(
                    f"no features for '{key}' in '{self.path}' (it holds: {held}); "
                    "run extract_features with these settings"
                )
            g = f[key]
            done = g["done"][:]
            if not (g.attrs.get("complete", False) and done.all()):
                raise FeatureCacheError(
                    f"features for '{key}' in '{self.path}' are incomplete ({int(done.sum())}/"
                    f"{len(done)} rows): an extraction was interrupted; run extract_features "
                    "again to finish it"
                )
            names = json.loads(g.attrs["splits"])
            out = FeatureSet(
                g["features"][:],
                g["label"][:].astype(np.int64),
                [p.decode() if isinstance(p, bytes) else p for p in g["path"][:]],
                np.array([names[i] for i in g["split"][:]]),
                json.loads(g.attrs["classes"]),
                {k: _attr(v) for k, v in g.attrs.items()},
            )
        return out.split(split) if split else out


def _attr(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def extract_features(
    data: Any,
    backbones: Sequence[str] = ("efficientnet_lite0",),
    layer: str | None = None,
    pool: str = "avg",
    output: str | os.PathLike = "features.h5",
    batch_size: int = 32,
    val_split: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    progress: Progress | None = None,
    image_size: int | None = None,
    weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    precision: str = "float32",
) -> FeatureStore:
    """Run each backbone once over every split of a folder dataset and cache the features.

    Args:
        data: a dataset folder (layouts as in ``train``) or a scanned ``Dataset``.
        backbones: zoo names; each becomes one HDF5 group per (layer, pool, image size).
        layer: any layer name of the backbone (default: its last feature map).
        pool: ``avg``/``max`` over height and width, or ``none`` to keep the map.
        output: the HDF5 file; ``OUTPUT.partial`` holds an unfinished run.
        image_size: side images are decoded at (default: each backbone's own size); larger
            sizes are resized inside the graph, as the ensemble model does; a smaller one runs
            the backbone at that size.
        weights: a weights file for the backbone (default: the zoo's), or one per backbone.
        precision: what the backbones compute in (float32 unless asked: training reads this
            cache); features of another precision are their own group (``...,precision=``).
        progress: ``progress(backbone, rows_done, rows_total)`` after every batch; an
            exception raised there stops the run, which the next call resumes.

    Raises:
        FeatureCacheError: an unknown layer (close matches listed) or an unreadable image.
        kerascope.data.DatasetError: the folder is not a usable dataset.
        FeatureCacheError: ``output`` is written by another process right now, or is not a
            readable feature file (truncated, or another kind of file): it is never replaced.
    """
    from kerascope.data import scan_dataset

    out = Path(output)
    with _writer_lock(out):
        _check_output(out)
        dataset = data
        if isinstance(data, str | os.PathLike):
            dataset = scan_dataset(data, val_split=val_split, seed=seed, skip_bad=skip_bad)
        return _extract(dataset, backbones, layer, pool, out, batch_size, progress, image_size,
                        weights, precision)  # fmt: skip


def _extract(dataset: Any, backbones: Sequence[str], layer: str | None, pool: str, out: Path,
             batch_size: int, progress: Progress | None, image_size: int | None,
             weights: Any, precision: str = "float32") -> FeatureStore:  # fmt: skip
    """`extract_features` under the output's lock, its output checked."""
    import h5py

    files = weights_per_backbone(weights, backbones)
    specs = list(
        dict.fromkeys(
            FeatureSpec.make(b, layer, pool, image_size, w, precision)
            for b, w in zip(backbones, files, strict=True)
        )
    )
    sums = {s: weights_checksum(weights_file(s)) for s in specs}
    rows = Rows.of(dataset)
    partial = partial_path(out)
    plans = None
    if partial.is_file():  # this process holds the lock: no one else is writing it
        plans = _plans(partial, specs, rows, sums)
        if plans is None:  # killed while the file itself was written: resume from `out`
            _remove(partial, out)
    source = partial if plans is not None else out
    if plans is None:
        plans = _plans(out, specs, rows, sums) if out.is_file() else {}
        if plans is None:
            raise FeatureCacheError(_unreadable(out, None))
        plans = {s: plans.get(s, ("new", None)) for s in specs}
    computed = dict.fromkeys((s.key for s in specs), 0)
    if source == out and all(mode == "keep" for mode, _ in plans.values()):
        return FeatureStore(out, computed)
    with _h5_errors(out) as lost:
        if source == out and out.is_file():
            _copy(out, partial)
        f = h5py.File(partial, "a")
        try:
            f.attrs["format"] = FORMAT
            for s in specs:
                computed[s.key] = _fill(f, s, plans[s], rows, sums[s], batch_size, progress)
        except BaseException as exc:
            _release(f, exc)
            raise
        f.close()
        if lost:
            raise output_error(out, _as_os_error(lost[0]))
        _finish(partial, out, [s.key for s in specs], len(rows.paths))
    return FeatureStore(out, computed)


def _release(f: Any, exc: BaseException) -> None:
    """Close ``f`` after a failure, releasing first the datasets the failed frames hold.

    HDF5 crashes (SIGSEGV) when a dataset is freed after its file's close failed to write, and
    Cython prints a traceback for each object whose release fails; both are kept quiet here
    (the failure itself is reported by `_h5_errors`).
    """
    with contextlib.redirect_stderr(io.StringIO()):
        traceback.clear_frames(exc.__traceback__)
        with contextlib.suppress(Exception):
            f.close()


@contextmanager
def _h5_errors(out: Path) -> Iterator[list[BaseException]]:
    """Any failed write (a full disk, a read-only folder) stops the job with one line.

    HDF5 writes a dataset's cached chunks when the dataset object is released, and h5py only
    *prints* an error raised there, so the run would go on and report success over rows of
    zeros. Such errors are collected (``sys.unraisablehook``) into the list yielded.
    """
    lost: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        if info.exc_value is not None and _h5_write_failed(info.exc_value):
            lost.append(info.exc_value)
        else:
            previous(info)

    sys.unraisablehook = hook
    try:
        yield lost
    except OutputError:
        _discard(partial_path(out))
        raise
    except Exception as exc:
        if _h5_write_failed(exc) or isinstance(exc, OSError):
            _discard(partial_path(out))
            raise output_error(out, _as_os_error(exc)) from None
        raise
    finally:
        sys.unraisablehook = previous


def _discard(partial: Path) -> None:
    """A work file whose write failed may hold half-written structures: never resume from it
    (its rows are recomputed next time), and give its space back to the full disk."""
    with contextlib.suppress(OSError):
        partial.unlink()


def _h5_write_failed(exc: BaseException) -> bool:
    return is_disk_error(exc) or "write failed" in str(exc) or "errno = " in str(exc)


def _as_os_error(exc: BaseException) -> OSError:
    """h5py's RuntimeError text holds the C errno (``errno = 28``); turn it back into one."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    found = re.search(r"errno = (\d+), error message = '([^']*)'", str(exc))
    if found:
        return OSError(int(found[1]), found[2])
    if is_disk_error(exc):
        return OSError(errno.ENOSPC, "No space left on device")
    return OSError(errno.EIO, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _finish(partial: Path, out: Path, keys: list[str], n: int) -> None:
    """Mark the groups complete only once their rows are verified on disk, then rename.

    Order: fsync; re-open and check every row is done; set ``complete``; fsync; re-open and
    check the mark; rename; fsync the folder. A failure at any step leaves no final file.
    """
    import h5py

    fsync_path(partial)
    _verify(partial, out, keys, n, marked=False)
    with h5py.File(partial, "a") as f:
        for key in keys:
            f[key].attrs["complete"] = True
    fsync_path(partial)
    _verify(partial, out, keys, n, marked=True)
    os.replace(partial, out)
    fsync_dir(out.parent)


def _verify(partial: Path, out: Path, keys: list[str], n: int, marked: bool) -> None:
    import h5py

    with h5py.File(partial, "r") as f:
        for key in keys:
            g = f[key]
            rows, done = len(g["features"]), int(g["done"][:].sum())
            if rows != n or done != n or (marked and not g.attrs.get("complete", False)):
                raise output_error(
                    out,
                    OSError(errno.EIO, f"'{key}' holds {done}/{n} rows after writing ({rows})"),
                )


def _plans(source: Path, specs: list, rows: Rows, sums: dict) -> dict | None:
    """Each spec's plan against the groups in ``source``; None when ``source`` cannot be read
    (truncated, not HDF5, a damaged group)."""
    import h5py

    try:
        with h5py.File(source, "r") as f:
            return {s: _plan(f.get(s.key), rows, sums[s]) for s in specs}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _unreadable(path: Path, exc: BaseException | None) -> str:
    text = str(exc).splitlines()[0] if exc is not None and str(exc) else ""
    inner = re.search(r"\(([^()]*)\)\s*$", text)  # h5py: "Unable to ... (the reason)"
    why = f" ({inner[1] if inner else text})" if text else ""
    return (f"'{path}' is not a readable feature file{why}: it is truncated or not HDF5, and "
            "is kept as it is: move it away (or delete it) to compute the features again, or "
            "choose another output")  # fmt: skip


def _check_output(out: Path) -> None:
    """The output is a new path or a readable HDF5 file; anything else is one line."""
    import h5py

    if out.is_dir():
        raise FeatureCacheError(f"output '{out}' is a folder: give a file name, such as "
                                f"'{out / 'features.h5'}'")  # fmt: skip
    if not out.exists():
        return
    try:
        with h5py.File(out, "r") as f:
            list(f)
    except OSError as exc:
        raise FeatureCacheError(_unreadable(out, exc)) from None


def _remove(path: Path, out: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(out, exc) from None


def _copy(out: Path, partial: Path) -> None:
    """``out`` copied to the work file under a name of this process, then renamed: a kill
    mid-copy leaves a stray temp file, never a work file that is half a copy."""
    tmp = temp_name(partial)
    try:
        shutil.copyfile(out, tmp)
        os.replace(tmp, partial)
    finally:
        tmp.unlink(missing_ok=True)


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file a writer of ``output`` holds: hidden, beside it."""
    out = Path(output)
    return out.with_name(f".{out.name}.lock")


@contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block, or refuse in one line when another process does.

    A folder where no file can be created (read-only) is used without a lock: no one can write
    there, and a run that only reads its cached features still works.
    """
    lock = lock_path(out)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FeatureCacheError(f"output '{out}' lies under a file: choose a folder") from None
    except OSError as exc:
        raise output_error(out, exc) from None
    try:
        held = acquire(lock)
    except LockBusy as busy:
        raise FeatureCacheError(
            f"'{out}' is being written by {busy.holder}: wait for it to finish (then run again "
            "to use its features), or choose another output"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not out.is_file():
            raise output_error(out, exc) from None
        yield  # nothing can be written here, by anyone: reading the cache needs no lock
        return
    with held:
        yield


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
        and [p.decode() if isinstance(p, bytes) else p for p in g["path"][:]] == rows.paths
    )
    if same:
        return ("keep" if done.all() and g.attrs.get("complete") else "resume"), None
    old = {sha: i for i, sha in enumerate(g["sha1"][:]) if done[i]}
    return "rebuild", np.array([old.get(sha, -1) for sha in rows.sha1], np.int64)


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
    g.create_dataset("path", data=rows.paths, dtype=h5py.string_dtype())
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


def _fill(f, spec, plan, rows, checksum, batch_size, progress) -> int:
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
    from kerascope.inference import iter_batches

    size = (spec.image_size, spec.image_size)
    sources = [rows.paths[i] for i in todo]
    # Held open, so each flush writes (and checks) their cached chunks; a temporary dataset
    # would write them on release, where h5py can only print the error.
    features, marks = g["features"], g["done"]
    for start, items in zip(
        range(0, len(todo), batch_size), iter_batches(sources, size, batch_size), strict=True
    ):
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
