"""A read-only folder for tests: a tmpfs remounted read-only when this process may mount one
(EROFS, as on a read-only disk), else a folder without write permission (EACCES, as a plain
user), else, as root without mount rights, ``os`` calls that write under it raise EROFS.

`read_only(fill)` calls ``fill(folder)`` while the folder is still writable, then yields it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _mount(folder: Path) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def _chmod_tree(folder: Path, mode: int) -> None:
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), mode)
    os.chmod(folder, mode)


_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def _refuse_writes(folder: Path) -> Iterator[None]:
    """Root without mount rights: the ``os`` calls that write under ``folder`` raise EROFS."""
    mp = pytest.MonkeyPatch()
    inside = str(folder.resolve())

    def guard(name: str, writes: Callable[..., bool] = lambda *a, **k: True):
        original = getattr(os, name)

        def call(path, *args, **kwargs):
            target = os.path.abspath(os.fspath(path)) if isinstance(path, str | Path) else ""
            if target.startswith(inside) and writes(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return original(path, *args, **kwargs)

        mp.setattr(os, name, call)

    guard("open", lambda flags, *a, **k: bool(flags & _WRITES))
    for name in ("mkdir", "unlink", "rmdir", "replace", "rename"):
        guard(name)
    try:
        yield
    finally:
        mp.undo()


@contextlib.contextmanager
def read_only(fill: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A folder where nothing can be written, after ``fill(folder)`` put its contents in."""
    folder = Path(tempfile.mkdtemp(prefix="kerascope-readonly-"))
    mounted = _mount(folder)
    try:
        if fill is not None:
            fill(folder)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True,
                           capture_output=True)  # fmt: skip
            yield folder
        elif os.geteuid() != 0:
            _chmod_tree(folder, 0o555)
            yield folder
        else:
            with _refuse_writes(folder):
                yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            _chmod_tree(folder, 0o755)
        shutil.rmtree(folder, ignore_errors=True)
