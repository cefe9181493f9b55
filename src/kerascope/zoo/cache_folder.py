"""The weights cache folder itself: what is wrong with it, said as the weights cache, with how
to point kerascope at another one.

Why: a file where ``~/.keras/models`` belongs, a ``KERAS_HOME`` under ``/proc`` or naming a
file, or a read-only cache gave a traceback (``FileExistsError`` from ``mkdir``), a bare
"Not a directory: ...", or "could not write ...: choose another output location" for an
output the user never chose. `problem` tells it without writing; `make` creates the folder or
raises one `CacheFolderError` line; `os_problem` words a write that failed there anyway.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerascope.config import cache_dir, on_read_only_disk, user_temp_dir
from kerascope.errors import WeightsError

# What happened that the caller may want to say (the command prints it; DESIGN.md).
_log = logging.getLogger(__name__)


class CacheFolderError(WeightsError):
    """The weights cache folder cannot be used (a file, under a file, read-only, not creatable)."""


def origin() -> str:
    """Which setting chose the cache folder, as `cache_dir` reads them."""
    if os.environ.get("KERASCOPE_HOME"):
        return "KERASCOPE_HOME"
    return "$KERAS_HOME/models" if os.environ.get("KERAS_HOME") else "~/.keras/models, the default"


# What to do, in every message: the variable `cache_dir` reads first.
ELSEWHERE = "or set KERASCOPE_HOME to a folder you can write (the weights are kept in it)"

# A read-only file system: nothing to do there (no "create it", "make it writable").
READ_ONLY = "read-only file system"


def message(reason: str, folder: Path | None = None) -> str:
    """The one line for an unusable cache: "the weights cache 'F' (X) REASON: DO, or set ...",
    or "...REASON; set ..." where only another folder helps (`READ_ONLY`)."""
    folder = cache_dir() if folder is None else folder
    todo = f"; {ELSEWHERE.removeprefix('or ')}" if READ_ONLY in reason else f", {ELSEWHERE}"
    return f"the weights cache '{folder}' ({origin()}) {reason}{todo}"


def problem(folder: Path | None = None) -> str | None:
    """Why ``folder`` (default `cache_dir`) cannot hold new weights files, as the rest of a
    sentence, judged without writing; None when it is, or can be made, a writable folder."""
    folder = cache_dir() if folder is None else folder
    if os.path.isdir(folder):
        if on_read_only_disk(folder):
            return f"is on a {READ_ONLY}"
        if not os.access(folder, os.W_OK | os.X_OK):
            return "is not writable: make it writable"
        return None
    if os.path.lexists(folder):
        if os.path.islink(folder) and not os.path.exists(folder):
            target = os.readlink(folder)
            return f"is a symbolic link to '{target}', which does not exist: create that folder"
        return "is a file, not a folder: move that file away"
    for parent in Path(os.path.abspath(folder)).parents:
        if os.path.isdir(parent):
            if on_read_only_disk(parent):
                return f"cannot be created ('{parent}' is on a {READ_ONLY})"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"cannot be created ('{parent}' is not writable): create it"
            return None
        if os.path.lexists(parent):
            return f"lies under '{parent}', which is a file, not a folder: move that file away"
    return None


def os_problem(exc: OSError, folder: Path | None = None) -> str:
    """A failed mkdir or write in the cache folder as the rest of "the weights cache ... "."""
    found = problem(folder)
    if found is not None:
        return found
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "is not writable (permission denied): make it writable"
    if exc.errno == errno.EROFS:
        return f"is on a {READ_ONLY}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "is on a full disk: free some space"
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if exc.errno == errno.ENOENT:  # /proc/x: the file system takes no new folder there
        return f"cannot be created ({reason}): choose a folder on a disk"
    return f"cannot be used ({reason})"


def make(folder: Path | None = None) -> Path:
    """The cache folder, created if needed; `CacheFolderError` in one line if it cannot be."""
    folder = cache_dir() if folder is None else folder
    found = problem(folder)
    if found is None:
        try:
            os.makedirs(folder, exist_ok=True)
            return folder
        except OSError as exc:
            found = os_problem(exc, folder)
    raise CacheFolderError(message(found, folder))


_ported: dict[str, Path] = {}  # model name -> its weights ported outside the cache, this process

# `files.temp_name`'s hidden temp files: ".NAME.PID-XXXXXXXX.partial" and a library's suffix.
_TEMP = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.partial")


def port_outside(
    spec: Any, why: str, name: str, port: Callable[[Path], None], intact: Callable[[Path], bool]
) -> Path:
    """Weights a package ships, when the cache cannot take them (``why``: `message`'s line,
    said once per model and process): ``port``-ed to ``name`` in `user_temp_dir`, where later
    runs find them ``intact`` (the size and SHA-256 the cache's files are checked with).

    Why not refuse: the packaged models are the ones that work offline, and nothing about an
    unusable cache stops reading them. Why not a folder per run, removed at exit: a hard stop
    (a second SIGTERM, ``os._exit``) left 19 MB per model each time, and each run ported again
    (about 2 s). Only where the user's folder is refused (`user_temp_dir`) is it that still.
    """
    done = _ported.get(spec.name)
    if done is not None and done.is_file():
        return done
    try:
        folder: Path | None = user_temp_dir()
    except OSError as exc:
        folder, refused = None, exc.strerror or str(exc)
    package = spec.weights.package
    if folder is None:
        path = _run_folder(why) / name
        port(path)
        how = (f"ported from the '{package}' package for this run only ({refused}; each run "
               "ports it again until the cache is usable)")  # fmt: skip
    elif intact(folder / name):
        path = folder / name
        how = f"read from '{folder}', where an earlier run ported it from the '{package}' package"
    else:
        remove_dead_temps(folder)
        path = folder / name
        port(path)
        how = f"ported from the '{package}' package into '{folder}', where later runs find it"
    _ported[spec.name] = path
    _log.warning("%s; '%s' was %s", why, spec.name, how)
    return path


def _run_folder(why: str) -> Path:
    """A fresh temp folder, removed at exit: where a refused `user_temp_dir` leaves a port."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="kerascope-weights-"))
    except OSError:
        raise CacheFolderError(why) from None
    atexit.register(shutil.rmtree, folder, True)
    return folder


def remove_dead_temps(folder: Path) -> None:
    """Delete the temp files of ports a hard stop cut short in ``folder`` (this user's own):
    those of a process that is gone, never a live one's (the pid is in the name)."""
    for entry in os.scandir(folder):
        found = _TEMP.match(entry.name)
        if found is None or _alive(int(found[1])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's (not ours to judge), or no such call: leave it
        return True
    return True
