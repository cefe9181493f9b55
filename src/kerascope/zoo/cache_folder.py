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
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerascope.config import cache_dir
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


def message(reason: str, folder: Path | None = None) -> str:
    """The one line for an unusable cache: "the weights cache 'F' (X) REASON: DO, or set ..."."""
    folder = cache_dir() if folder is None else folder
    return f"the weights cache '{folder}' ({origin()}) {reason}, {ELSEWHERE}"


def problem(folder: Path | None = None) -> str | None:
    """Why ``folder`` (default `cache_dir`) cannot hold new weights files, as the rest of a
    sentence, judged without writing; None when it is, or can be made, a writable folder."""
    folder = cache_dir() if folder is None else folder
    if os.path.isdir(folder):
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
        return "is on a read-only file system"
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


_ported: dict[str, Path] = {}  # model name -> its weights ported for this process only


def port_for_this_run(spec: Any, source: Path, convert: Callable, why: str) -> Path:
    """Weights a package ships, ported into a temporary folder removed at exit, when the cache
    cannot take them (``why``: `message`'s line, said once per model and process).

    Why not refuse: the packaged models are the ones that work offline, and nothing about an
    unusable cache stops reading them; the cost is the port (about 2 s) on every run.
    """
    done = _ported.get(spec.name)
    if done is not None and done.is_file():
        return done
    try:
        folder = Path(tempfile.mkdtemp(prefix="kerascope-weights-"))
    except OSError:
        raise CacheFolderError(why) from None
    atexit.register(shutil.rmtree, folder, True)
    path = folder / f"{spec.name}.weights.h5"
    convert(spec.name, source, path)
    _ported[spec.name] = path
    _log.warning(
        "%s; '%s' was ported from the '%s' package for this run only (each run ports it again "
        "until the cache is usable)",
        why,
        spec.name,
        spec.weights.package,
    )
    return path
