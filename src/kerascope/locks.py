"""One writer at a time: exclusive lock files that leave nothing behind.

A run directory (``.lock``) and a feature cache (``.NAME.lock``) are each written by one
process. The lock is ``fcntl.flock`` on a hidden file, so the kernel drops it when its holder
exits however it exits (a kill included). The file itself is removed on release, while still
held; a process that opened it just before (and so locked a removed file) notices that the path
no longer names what it locked and tries again, so removal never lets two writers in.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from kerascope.errors import KerascopeError


class LockBusy(KerascopeError):
    """Another process holds the lock; ``holder`` names it (callers word their own message)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class HeldLock:
    """A lock this process holds; leaving the ``with`` block removes the file and drops it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # still held: no one can have taken it in between
        os.close(self._fd)
        self._fd = -1


def acquire(path: str | os.PathLike) -> HeldLock:
    """Take the exclusive lock at ``path`` (the file is created), or raise `LockBusy`.

    Raises:
        LockBusy: another process holds it (``holder`` says which pid, when it said).
        OSError: the file cannot be created (read-only folder, no permission, a file where a
            folder should be); the caller words that for its output.
    """
    import fcntl

    lock = Path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = lock_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise LockBusy(holder) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file we locked: lock the new one
    with contextlib.suppress(OSError):  # the pid is a courtesy for the refusal message
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return HeldLock(lock, fd)


def lock_holder(fd: int) -> str:
    """Who holds the lock open at ``fd``: the pid its holder wrote, when it did."""
    try:
        return f"another kerascope process (pid {int(os.pread(fd, 32, 0).decode().strip())})"
    except (OSError, ValueError):
        return "another kerascope process"
