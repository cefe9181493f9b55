"""Where a process other than 0 of a multi-process run writes: a scratch copy of the run in
the temporary folder (only process 0 writes the run itself), removed when the process ends,
and, when a process was killed before it could remove its own, by the next one on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def private_run_dir(run_dir: Path, resume: bool) -> Iterator[Path]:
    """Where this process writes: the run directory for process 0, else a scratch folder
    (a copy of the run to resume) removed at the end: only process 0 writes the run."""
    import jax
    import keras

    if keras.backend.backend() != "jax" or jax.process_index() == 0:
        yield run_dir
        return
    remove_stale_scratch(Path(tempfile.gettempdir()))
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(jax.process_index())))
    target = scratch / run_dir.name
    _scratch.append(scratch)
    try:
        if resume:
            shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".lock*"))
        yield target
    finally:
        remove_scratch()


_scratch: list[Path] = []  # this process's scratch copies (a process other than 0)


def scratch_prefix(process: int) -> str:
    """A scratch folder's name up to its random part: process index, host and pid, so a
    later process can tell a folder whose owner died (killed, or power lost) from one in use."""
    return f"kerascope-process{process}-{_host_tag()}-{os.getpid()}-"


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch folders in ``folder`` that a process of this host made and that
    outlived it: a killed process cannot remove its own (a copy of the run, best weights
    included). Folders of other hosts (a shared temporary folder), of other users, and of
    processes still running are left alone. Returns those removed."""
    host = _host_tag()
    removed = []
    for path in folder.glob(f"kerascope-process*-{host}-*-*"):
        owner = path.name.removeprefix("kerascope-process").split("-", 1)[-1]
        pid = owner.removeprefix(f"{host}-").split("-", 1)[0]
        if not owner.startswith(f"{host}-") or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _host_tag() -> str:
    import socket

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's, or unknown: never remove
    return True


def remove_scratch() -> None:
    """Remove the scratch copies; also called by a process that ends itself when a peer
    failed (:class:`~kerascope.training.starting.PeerWatch`)."""
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)
