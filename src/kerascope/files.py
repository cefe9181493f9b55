"""Every file kerascope writes goes through here: temp name in the same folder, fsync, rename.

A reader (a viewer, a later `--resume`, a spreadsheet) sees either the previous file or the
complete new one, never half of one. A full disk or a read-only folder stops the job with one
line naming the file (`OutputError`), and the previous file is left untouched. Writers that
need a path rather than a file object (Keras ``model.save``, matplotlib ``savefig``, h5py,
PyAV) use `atomic_path`; everything else uses `atomic_open` or the ``write_*`` helpers.

What sits at the path decides how it is written (`output_target`): a regular file or a new
name is replaced atomically as above; a symbolic link is followed and the file it points to is
replaced (the link stays a link); a FIFO, a character device (``/dev/null``, a terminal) or a
``/dev/fd/N`` (bash ``-o >(gzip > x.gz)``) is written in place, streaming, never renamed over;
a directory, socket or block device is refused in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kerascope.errors import KerascopeError

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputError(KerascopeError, OSError):
    """An output file could not be written (disk full, read-only, permissions)."""


def temp_name(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path``: same folder, so the final rename is atomic."""
    path = Path(os.path.abspath(os.fspath(path)))
    # at most 150 bytes of the name: a long name (255 bytes is the usual limit; 85 CJK
    # characters) still leaves room for the marks, a library's suffix and a temp of the temp
    name = os.fsdecode(os.fsencode(path.name)[:150])  # (a name's undecodable bytes kept)
    return path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete the temp files of writes a kill cut short in ``folder`` (`temp_name`'s pattern).

    Only for a folder the caller owns exclusively (a locked run, a job's output): a live write
    of another process would lose its temp file.
    """
    for stale in Path(folder).glob(".*.partial*"):
        stale.unlink(missing_ok=True)


def output_error(
    path: str | os.PathLike, exc: BaseException, kept: bool = True, folder: Any = None
) -> OutputError:
    """One line for a failed write of ``path``: what happened and what to do.

    ``kept``: the previous file is untouched (atomic replacement); False for a stream written in
    place (a FIFO, a device), where that promise would be false. Said only where a file is
    there to keep (``-o /proc/m.onnx`` promised to keep a file that never was). ``folder``:
    the missing folder of ``path`` that could not be made, named as such (not as the file).
    """
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
    kept_note = " (any previous file is kept)" if kept and os.path.lexists(path) else ""
    if folder is not None:
        reason = f"its folder '{folder}' cannot be created ({reason})"
    error = OutputError(f"could not write '{path}': {reason}; {todo}{kept_note}")
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


# Paths that name a descriptor of this process (bash process substitution gives /dev/fd/63):
# written in place whatever they resolve to, since the name is not a file a rename could land on.
_FD_PREFIXES = ("/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/", "/dev/stdout", "/dev/stderr")


@dataclass(frozen=True)
class OutputTarget:
    """Where and how an output is written: ``path`` is the file to replace atomically (a
    symbolic link already followed), or the FIFO/device/descriptor to write in place when
    ``stream`` is true; ``what`` says what was found (for messages)."""

    path: Path
    stream: bool
    what: str


def holds_a_file(path: str | os.PathLike) -> bool:
    """Whether a write to ``path`` would replace a file there: not ``-``, a FIFO, a device or
    a descriptor (written in place), nor a new name. A stopped job then writes beside it."""
    if os.fspath(path) == "-" or not os.path.lexists(path):
        return False
    try:
        return not output_target(path).stream
    except OutputError:
        return False


def _names_a_descriptor(path: str) -> bool:
    absolute = os.path.abspath(path)
    if absolute.startswith(_FD_PREFIXES):
        return True
    parts = absolute.split(os.sep)  # /proc/<pid>/fd/<n>
    return len(parts) == 5 and parts[1] == "proc" and parts[3] == "fd"


def output_target(path: str | os.PathLike) -> OutputTarget:
    """What sits at ``path`` and how kerascope writes there; refuses what it must not replace.

    Callers may check an output this way before any work; `atomic_path` and `atomic_open` do.

    Raises:
        OutputError: ``path`` is a directory, socket, block device, a symbolic link loop, or
            a link to a missing name in a folder that does not exist.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)  # follows links, also /proc/self/fd/N to the pipe behind it
    except FileNotFoundError:
        # a new name, or a link to one: the link's target is created (the link stays), never
        # the folders it would lie in (`kerascope export` made /nonexistent/dir for one)
        if not os.path.islink(name):
            return OutputTarget(Path(name), False, "new file")
        real = os.path.realpath(name)
        if not os.path.isdir(os.path.dirname(real)):
            error = OutputError(f"cannot write '{name}': it is a symbolic link to '{real}', "
                                "whose folder does not exist; create that folder, or remove "
                                "the link")  # fmt: skip
            error.errno = errno.ENOENT
            raise error from None
        return OutputTarget(Path(real), False, "new file")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(name, "a symbolic link loop (the link leads back to itself)") from None
        return OutputTarget(Path(name), False, "file")  # the write says what is wrong
    mode = st.st_mode
    if stat.S_ISFIFO(mode):
        return OutputTarget(Path(name), True, "FIFO")
    if stat.S_ISCHR(mode):
        return OutputTarget(Path(name), True, "character device")
    if stat.S_ISREG(mode):
        if _names_a_descriptor(name):
            return OutputTarget(Path(name), True, "open file descriptor")
        return OutputTarget(Path(os.path.realpath(name)), False, "file")
    what = (
        "a directory" if stat.S_ISDIR(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "not a regular file"
    )  # fmt: skip
    raise _refused(name, what)


def _refused(path: str, what: str) -> OutputError:
    error = OutputError(
        f"cannot write '{path}': it is {what}, which kerascope does not replace; "
        "name a file (a new one, or one to replace), a FIFO or a device"
    )
    error.errno = errno.EISDIR if what == "a directory" else errno.EINVAL
    return error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path for a library to write; on success fsync and rename it over ``path``.

    ``suffix`` is appended to the temp name for libraries that pick the format from it
    (``.keras``, ``.png``, ``.mp4``). On any error the temp file is removed, ``path`` is left as
    it was, and an OS error becomes an `OutputError`. A symbolic link is followed (its target
    is replaced); a FIFO or device (`output_target`) gets the finished temp file's bytes copied
    into it instead of a rename, since a library given a path cannot stream.
    """
    target = output_target(path)
    if target.stream:
        with _via_temp_copy(Path(path), suffix) as tmp:
            yield tmp
        return
    final = target.path
    tmp = temp_name(final)
    if suffix:
        tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        fsync_path(tmp)
        _keep_mode(final, tmp)  # after the fsync, which opens it for reading
        os.replace(tmp, final)
        fsync_dir(tmp.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _reraise(path, exc, kept=True)
        raise


def place_new(tmp: Path, final: str | os.PathLike) -> None:
    """Give the finished ``tmp`` the name ``final`` only while no file has it: a hard link fails
    atomically on an existing name, where a rename would replace a file created meanwhile (an
    output checked free before minutes of work). ``tmp`` is gone either way."""
    final = Path(final)
    appeared = OutputError(
        f"'{final}' was created by something else while kerascope was writing it; it was left "
        "as it is and nothing was written: choose another name, or replace it with --overwrite"
    )
    try:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise appeared from None
        except OSError:  # a file system without hard links (FAT, some network shares)
            if os.path.lexists(final):
                raise appeared from None
            os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _keep_mode(final: Path, tmp: Path) -> None:
    """The file replaced keeps its permissions: a private (600) results file became
    world-readable (644) when a run replaced it."""
    with contextlib.suppress(OSError):
        found = os.stat(final)
        if stat.S_ISREG(found.st_mode) and os.path.exists(tmp):
            os.chmod(tmp, found.st_mode & 0o777)  # never a setuid or setgid bit


def _reraise(path: str | os.PathLike, exc: BaseException, kept: bool) -> None:
    """An OS error or a full disk raised as `OutputError`; anything else is left to raise."""
    if isinstance(exc, OSError) and not isinstance(exc, KerascopeError):
        raise output_error(path, exc, kept) from exc
    if isinstance(exc, Exception) and is_disk_error(exc):
        raise output_error(path, OSError(errno.ENOSPC, "No space left on device"), kept) from exc


@contextlib.contextmanager
def _via_temp_copy(path: Path, suffix: str) -> Iterator[Path]:
    """A temp file in the system temp folder; once complete, its bytes go into ``path``."""
    folder = Path(tempfile.mkdtemp(prefix="kerascope-out-"))
    tmp = folder / f"{path.name or 'output'}.partial{suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as src, _open_stream(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException as exc:
        _reraise(path, exc, kept=False)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open_stream(path: Path, mode: str, encoding: str | None = None,
                 newline: str | None = None) -> IO[Any]:  # fmt: skip
    """Open a FIFO, device or descriptor for writing as it is: no create, no rename."""
    flags = os.O_WRONLY
    if stat.S_ISREG(os.stat(path).st_mode):
        flags |= os.O_TRUNC  # /dev/fd/N on a regular file: replace its content like `>`
    fd = os.open(path, flags)
    return os.fdopen(fd, mode, encoding=encoding, newline=newline)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only replaces ``path`` once everything was written and synced.

    Text is always UTF-8, whatever the locale (``LC_ALL=C`` must not break an output). A FIFO,
    device or ``/dev/fd/N`` is opened and written in place, streaming (`output_target`).
    """
    binary = "b" in mode
    encoding, newline = (None, None) if binary else (encoding, newline)
    if output_target(path).stream:
        try:
            with _open_stream(Path(path), mode, encoding, newline) as handle:
                yield handle
        except BaseException as exc:
            _reraise(path, exc, kept=False)
            raise
        return
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as handle:
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


def file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names (links followed), or None when nothing is there:
    one key per file, however it is named (a link, a hard link, another spelling)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def input_files(sources: Sequence[Any]) -> dict[tuple[int, int], str]:
    """The files a job reads, by (device, inode): a link or another spelling is the same file."""
    from kerascope.sources import Missing

    found = {}
    for s in sources:
        if isinstance(s, str | os.PathLike) and not isinstance(s, Missing):
            key = file_identity(s)
            if key is not None:
                found[key] = os.fspath(s)
    return found


def check_not_an_input(path: str | os.PathLike, sources: Sequence[Any], what: str = "-o") -> None:
    """Refuse an output file that is one of the job's inputs: ``classify x.jpg -o x.jpg``
    replaced the photo with its results (exit 0)."""
    if str(path) != "-" and file_identity(path) in input_files(sources):
        raise OutputError(f"{what} '{path}' is one of the inputs: writing it would replace that "
                          "file; choose another name")  # fmt: skip


def missing_folders(folder: str | os.PathLike | None) -> list[Path]:
    """The folders ``os.makedirs(folder)`` would make, deepest first: what a stopped run that
    made them removes again when it left them empty (`remove_empty`)."""
    missing: list[Path] = []
    if folder is not None:
        path = Path(os.path.abspath(folder))
        for part in (path, *path.parents):
            if os.path.lexists(part):
                break
            missing.append(part)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a stopped run made, deepest first, those it left empty only."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as JSON, written atomically. A file name that is not UTF-8 (its bytes held as
    lone surrogates, PEP 383) is written as a ``\\udcff`` escape, which reads back as the same
    name (a ``split.json`` must match the files); other text stays as it is (``café``)."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return write_text(path, text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinity as None, for JSON others read: bare ``NaN`` is no
    JSON (JavaScript's ``JSON.parse`` refused a multi-label ``metrics.json`` with a label
    that has no positives)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def fresh_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else the first free ``stem-1.suffix``, ``stem-2...``:
    for a default output name, which must never replace a file the user did not name."""
    path = Path(path)
    for n in range(10_000):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise KerascopeError(f"'{path}' and 9,999 numbered variants exist: give -o FILE")


def check_output_folder(folder: str | os.PathLike, what: str = "-o") -> None:
    """Refuse, before any work, an output folder that is a file, a link to one, a dangling or
    looping link, or lies under a file: one line naming it, never a traceback after the work."""
    path = Path(folder)
    for part in (path, *path.parents):
        if os.path.isdir(part):
            return
        if os.path.lexists(part):
            broken = os.path.islink(part) and not os.path.exists(part)
            kind = "a broken or looping link" if broken else "a file"
            where = f"is {kind}" if part == path else f"lies under '{part}', which is {kind}"
            raise OutputError(f"{what} '{folder}' {where}, not a folder: choose a folder")


def make_output_folder(folder: str | os.PathLike, what: str = "-o") -> Path:
    """``folder`` made (with its parents) for outputs: `check_output_folder`'s refusals and a
    failed mkdir (permissions, a read-only disk) as one line."""
    check_output_folder(folder, what)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, FileExistsError | NotADirectoryError):  # made a file meanwhile
            check_output_folder(folder, what)
        raise output_error(folder, exc) from None
    return Path(folder)


def check_output_file(path: str | os.PathLike, what: str = "-o") -> None:
    """Refuse, before any work, an output file that cannot be written: `output_target`'s
    refusals, a folder that does not exist, one this user cannot write in (before: found
    after every image was classified, and all the results lost)."""
    target = output_target(path)
    if target.stream:
        return
    folder = target.path.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} '{path}': the folder '{folder}' does not "
                          "exist; create it, or choose another place")  # fmt: skip
    if not os.access(folder, os.W_OK | os.X_OK):
        raise output_error(path, PermissionError(errno.EACCES, "Permission denied"))


def probe_folder(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Create and remove a hidden file in ``folder``, where ``path`` will be written: one line
    (`output_error`, naming ``path``) before any work when nothing can be written there.
    Stricter than ``os.access``, which passes root everywhere (a read-only mount, /proc)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".kerascope-probe-", suffix=".partial", dir=folder)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
