"""A full disk for tests: a small tmpfs when this process may mount one, else a file-size limit.

`small_disk(size)` yields a `SmallDisk`: ``folder`` is where the command under test writes,
and ``preexec`` goes to ``subprocess.run(..., preexec_fn=disk.preexec)``. On a tmpfs the folder
really runs out of space (ENOSPC) and ``preexec`` does nothing; without mount rights (CI as a
plain user) the folder is ordinary and ``preexec`` caps every file the child writes at ``size``
bytes (RLIMIT_FSIZE, EFBIG) — the same failure reached by the same code paths.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SmallDisk:
    folder: Path
    size: int
    tmpfs: bool

    def preexec(self) -> None:
        if not self.tmpfs:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))

    def fill(self) -> None:
        """Use up what is left (tmpfs only), so the next write fails at once."""
        if self.tmpfs:
            filler = self.folder / ".filler"
            with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)

    def free(self) -> None:
        """Give the space back (remove the filler)."""
        (self.folder / ".filler").unlink(missing_ok=True)


def _mount(folder: Path, size: int) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return done.returncode == 0


@contextlib.contextmanager
def small_disk(size: int = 512 * 1024) -> Iterator[SmallDisk]:
    folder = Path(tempfile.mkdtemp(prefix="kerascope-fulldisk-"))
    mounted = _mount(folder, size)
    try:
        yield SmallDisk(folder, size, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
