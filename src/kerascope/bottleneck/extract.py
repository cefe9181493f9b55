"""Writing a feature store: `extract_features`, the work file's life and its lock.

Work happens in ``features.h5.partial`` with a per-row ``done`` mask flushed every batch; only a
finished run is renamed to ``features.h5``, so a killed run resumes and never leaves a file that
reads complete. One process writes an output at a time: it holds ``.features.h5.lock``
(`kerascope.locks`), and a second run on the same output is refused in one line instead of
deleting the first one's work file (both failed). A ``features.h5`` that is not a readable HDF5
file (truncated, or some other file) is refused in one line, never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kerascope.batch_sizes import checked_batch_size
from kerascope.bottleneck.branches import (
    FeatureCacheError,
    FeatureSpec,
    forward_for,
    weights_checksum,
    weights_file,
    weights_per_backbone,
)
from kerascope.bottleneck.groups import fill_group, plan_groups
from kerascope.bottleneck.store import (
    FORMAT,
    FeatureStore,
    Progress,
    Rows,
    partial_path,
    unreadable,
)
from kerascope.files import (
    OutputError,
    fsync_dir,
    fsync_path,
    is_disk_error,
    output_error,
    output_target,
    temp_name,
)
from kerascope.locks import LockBusy, acquire


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
    if not out.is_dir():  # a link: its target is written, the link stays (it was replaced)
        out = output_target(out).path
    with _writer_lock(out):
        _check_output(out)
        batch_size = checked_batch_size(batch_size)
        dataset = data
        if isinstance(data, str | os.PathLike):
            dataset = scan_dataset(data, val_split=val_split, seed=seed, skip_bad=skip_bad)
        store = _extract(dataset, backbones, layer, pool, out, batch_size, progress,
                         image_size, weights, precision)  # fmt: skip
        store.skipped = list(getattr(dataset, "bad", []))  # said by the caller, as train says it
        return store


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
        plans = plan_groups(partial, specs, rows, sums)
        if plans is None:  # killed while the file itself was written: resume from `out`
            _remove(partial, out)
    source = partial if plans is not None else out
    if plans is None:
        plans = plan_groups(out, specs, rows, sums) if out.is_file() else {}
        if plans is None:
            raise FeatureCacheError(unreadable(out, None))
        plans = {s: plans.get(s, ("new", None)) for s in specs}
    computed = dict.fromkeys((s.key for s in specs), 0)
    if source == out and all(mode == "keep" for mode, _ in plans.values()):
        return FeatureStore(out, computed)
    for s in specs:  # built now (kept for the work): a bad --layer left an empty work file
        if plans[s][0] != "keep":
            forward_for(s)
    with _h5_errors(out) as lost:
        if source == out and out.is_file():
            _copy(out, partial)
        f = h5py.File(partial, "a")
        try:
            f.attrs["format"] = FORMAT
            for s in specs:
                computed[s.key] = fill_group(f, s, plans[s], rows, sums[s], batch_size, progress)
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
        raise FeatureCacheError(unreadable(out, exc)) from None


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
