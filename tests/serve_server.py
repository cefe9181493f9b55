"""A real `kerascope serve` in a subprocess on a free loopback port, for the serve tests.

The server is the command users run (``python -m kerascope.serve``), with this session's
environment (its private weights cache and JAX compilation cache), so the tests exercise the
startup path too. The log goes to a file that is shown when the server fails to come up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .ports import free_port

httpx = pytest.importorskip("httpx", reason="the serve tests need the test extra (httpx)")
pytest.importorskip("fastapi", reason="the serve tests need the serve extra (fastapi)")


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log_path: str

    def log(self) -> str:
        return _read(self.log_path, 1 << 20)

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MB."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")


@contextlib.contextmanager
def running_server(*args: str, startup_s: float = 240.0) -> Iterator[str]:
    """Start a server with ``args`` (after ``--port``), yield its base URL, stop it after."""
    with server_process(*args, startup_s=startup_s) as server:
        yield server.url


@contextlib.contextmanager
def server_process(
    *args: str, startup_s: float = 240.0, nofile: int | None = None
) -> Iterator[Server]:
    """`running_server`, yielding the `Server`; ``nofile``: the server's RLIMIT_NOFILE."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="kerascope-serve-", suffix=".log", delete=False)
    run = ["-m", "kerascope.serve"]
    if nofile:  # set in the child itself: a preexec_fn would fork this multithreaded process
        run = [
            "-c",
            "import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
            "runpy.run_module('kerascope.serve', run_name='__main__', alter_sys=True)",
        ]
    cmd = [sys.executable, *run, "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{_read(log.name)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {startup_s:.0f} s:\n{_read(log.name)}")
            time.sleep(0.25)
        yield Server(url, port, proc, log.name)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def _read(path: str, tail: int = 4000) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()[-tail:]
