"""A real `kerascope serve` in a subprocess on a free loopback port, for the serve tests.

The server is the command users run (``python -m kerascope.serve``), with this session's
environment (its private weights cache and JAX compilation cache), so the tests exercise the
startup path too. The log goes to a file that is shown when the server fails to come up.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need the test extra (httpx)")
pytest.importorskip("fastapi", reason="the serve tests need the serve extra (fastapi)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, startup_s: float = 240.0) -> Iterator[str]:
    """Start a server with ``args`` (after ``--port``), yield its base URL, stop it after."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="kerascope-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "kerascope.serve", "--port", str(port),
           "--log-level", "warning", *args]  # fmt: skip
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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def _read(path: str) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()[-4000:]
