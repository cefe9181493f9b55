"""Every file kerascope writes goes through here: temp name in the same folder, fsync, rename.

A reader (a viewer, a later `--resume`, a spreadsheet) sees either the previous file or the
complete new one, never half of one. A full disk or a read-only folder stops the job with one
line naming the file (`OutputError`), and the previous file is left untouched. Writers that
need a path rather than a file object (Keras ``model.save``, matplotlib ``savefig``, h5py,
PyAV) use `atomic_path`; everything else uses `atomic_open` or the ``write_*`` helpers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from kerascope.errors import KerascopeError

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputError(KerascopeError, OSError):
    """An output file could not be written (disk full, read-only, permissions)."""


def temp_name(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path``: same folder, so the final rename is atomic."""
    path = Path(os.path.abspath(os.fspath(path)))
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete the temp files of writes a kill cut short in ``folder`` (`temp_name`'s pattern).

    Only for a folder the caller owns exclusively (a locked run, a job's output): a live write
    of another process would lose its temp file.
    """
    for stale in Path(folder).glob(".*.partial*"):
        stale.unlink(missing_ok=True)


def output_error(path: str | os.PathLike, exc: BaseException) -> OutputError:
    """One line for a failed write of ``path``: what happened and what to do."""
    code = getattr(exc, "errno", None)
    if code in _DISK_ERRORS:
        reason = "no space left on the device"
        todo = "free some space and run again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied" if code != errno.EROFS else "the file system is read-only"
        todo = "choose another output location"
    else:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__
        todo = "check the output location and run again"
    error = OutputError(f"could not write '{path}': {reason}; {todo} (any previous file is kept)")
    error.errno = code
    return error


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) means the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in _DISK_ERRORS or "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file written by someone else (a library that took a path) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the rename itself durable; some file systems cannot sync a folder, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a library to write; on success fsync and rename.

    ``suffix`` is appended to the temp name for libraries that pick the format from it
    (``.keras``, ``.png``, ``.mp4``). On any error the temp file is removed, ``path`` is left as
    it was, and an OS error becomes an `OutputError`.
    """
    path = Path(path)
    tmp = temp_name(path)
    if suffix:
        tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(tmp.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, KerascopeError):
            raise output_error(path, exc) from exc
        if isinstance(exc, Exception) and is_disk_error(exc):
            raise output_error(path, OSError(errno.ENOSPC, "No space left on device")) from exc
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only replaces ``path`` once everything was written and synced.

    Text is always UTF-8, whatever the locale (``LC_ALL=C`` must not break an output).
    """
    binary = "b" in mode
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(
            fd, mode, encoding=None if binary else encoding, newline=None if binary else newline
        ) as handle:
            yield handle
            handle.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, newline: str | None = None) -> Path:
    with atomic_open(path, "w", newline=newline) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
