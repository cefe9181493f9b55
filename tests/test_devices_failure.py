"""A process of a multi-process run that fails after training started (issue 19): the others
stop within seconds with one line naming it and its reason, instead of waiting for JAX's
timeouts (before: the failing process waited at JAX's shutdown barrier while the others
waited in their collective for it, until JAX aborted them with a C++ stack trace).

Two real processes on 127.0.0.1 (JAX's gloo CPU collectives). The failure is real: once an
epoch is saved, every image of the failing process's own copy of the dataset is overwritten
with bytes that do not decode; that process keeps no decoded-image cache (its KERASCOPE_HOME
is a file, so the cache cannot be made and it decodes its rows every epoch), so its next
batch fails to decode, as a disk going bad under one machine's dataset would.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from kerascope.testing import cat_and_coffee

from .ports import free_port
from .test_train_devices import _env

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's processes")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """test_train_devices' photos: 26 training and 6 validation crops of the cat and coffee."""
    return cat_and_coffee(tmp_path_factory.mktemp("photos"), n=16, size=40)


def _start_pair(photos: Path, tmp_path: Path, failing: int, own: Path | None = None):
    """Both processes of a 400-epoch LeNet run on 127.0.0.1, process ``failing`` on ``own``
    (a copy of the dataset) with no decode cache, each with its own TMPDIR; returns the
    processes and the run directory once process 0 has saved an epoch. (With a warm
    compilation cache 40 epochs ended before the test's signal reached them.)"""
    run, port = tmp_path / "run", free_port()
    no_cache = tmp_path / "home-is-a-file"
    no_cache.write_text("")
    args = ["--recipe", "lenet", "--engine", "keras", "--epochs", "400", "--patience", "400",
            "--batch-size", "8", "--image-size", "32", "-o", str(run)]  # fmt: skip
    procs = []
    for i in (0, 1):
        data, home = (own or photos, no_cache) if i == failing else (photos, tmp_path / f"h{i}")
        (tmp_path / f"tmp{i}").mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "kerascope", "train", str(data), *args, "--coordinator",
             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=_env(KERASCOPE_HOME=str(home), TMPDIR=str(tmp_path / f"tmp{i}")),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    deadline = time.monotonic() + 400
    while not (run / "history.csv").is_file() and time.monotonic() < deadline:
        if not all(p.poll() is None for p in procs):
            pytest.fail(f"a process ended before an epoch was saved: {_stop(procs)}")
        time.sleep(0.05)
    if not (run / "history.csv").is_file():
        pytest.fail(f"no epoch saved within 400 s: {_stop(procs)}")
    return procs, run


def _stop(procs: list[subprocess.Popen]) -> list[tuple[int | None, str]]:
    """Kill what still runs; each process's exit code (as it was) and the end of its stderr."""
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
    return [(code, p.communicate()[1][-2000:]) for code, p in zip(codes, procs, strict=True)]


def _ends(procs: list[subprocess.Popen], since: float) -> tuple[list[str], list[float]]:
    """Each process's stderr and when it ended, in seconds after ``since``."""
    errs, ended = [], []
    for i, p in enumerate(procs):
        try:
            errs.append(p.communicate(timeout=200)[1])
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {i} still ran 200 s later (exit codes and stderr, before they "
                        f"were killed: {_stop(procs)})")  # fmt: skip
        ended.append(time.monotonic() - since)
    return errs, ended


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kerascope: error:")]


@jax_only
@pytest.mark.slow
@pytest.mark.parametrize("failing", [1, 0])
def test_a_process_failing_in_training_stops_the_others_naming_it(photos, tmp_path, failing):
    """Process ``failing`` (1, or 0: the coordinator, whose exit takes JAX's key-value store
    with it) cannot decode its next batch in epoch 2 or later: it stops with its own one-line
    error, and the other process stops within seconds with one line naming it and that
    reason; both exit with code 2, without a traceback or JAX's abort."""
    own = tmp_path / "own-copy"
    shutil.copytree(photos, own)
    procs, run = _start_pair(photos, tmp_path, failing, own)
    for path in sorted(own.rglob("*.jpg")):
        path.write_bytes(b"not an image any more")
    errs, ended = _ends(procs, time.monotonic())
    other = 1 - failing
    lines = [_lines(err) for err in errs]
    assert [p.returncode for p in procs] == [2, 2], errs
    assert all("Traceback" not in err and "Check failure" not in err for err in errs), errs
    assert len(lines[failing]) == 1 and str(own) in lines[failing][0], errs[failing][-2000:]
    reason = lines[failing][0].removeprefix("kerascope: error: ")
    assert lines[other] == [f"kerascope: error: process {other} of 2: process {failing} "
                            f"stopped during training: {reason}; start every process again "
                            f"with `--resume {run}`"], errs[other][-2000:]  # fmt: skip
    print(f"process {failing} failed; ended {ended[0]:.1f} s and {ended[1]:.1f} s after the "
          "images were overwritten")  # fmt: skip
    assert max(ended) < 60, ended  # JAX's heartbeat alone is 100 s, its shutdown 300 s
    assert not list((tmp_path / "tmp1").glob("kerascope-process*"))  # its scratch copy: gone
    assert (run / "history.csv").is_file()  # process 0 kept the epochs it saved


@jax_only
@pytest.mark.slow
def test_ctrl_c_in_one_process_stops_the_other_naming_it(photos, tmp_path):
    """Ctrl-C (SIGINT) in process 1 alone: it stops as a single process does (exit 130, the
    last epoch saved), and process 0 stops within seconds with one line saying so, instead
    of waiting in its collective (before: JAX's timeouts, then a C++ abort)."""
    procs, run = _start_pair(photos, tmp_path, failing=1)
    procs[1].send_signal(signal.SIGINT)
    errs, ended = _ends(procs, time.monotonic())
    assert [p.returncode for p in procs] == [2, 130], errs
    assert all("Traceback" not in err and "Check failure" not in err for err in errs), errs
    assert _lines(errs[0]) == [f"kerascope: error: process 0 of 2: process 1 stopped during "
                               f"training: interrupted (Ctrl-C); start every process again "
                               f"with `--resume {run}`"], errs[0][-2000:]  # fmt: skip
    print(f"Ctrl-C in process 1; ended {ended[0]:.1f} s and {ended[1]:.1f} s after it")
    assert max(ended) < 60, ended


@jax_only
@pytest.mark.slow
@pytest.mark.parametrize("pid", [0, 1])
def test_ctrl_c_while_waiting_for_the_other_processes_ends_at_once(photos, tmp_path, pid):
    """Before: JAX waits for the other processes in C++, where no Python signal handler runs,
    so Ctrl-C took effect only when the wait timed out (120 s by default). Process 1 is
    caught waiting when it connects to the test's socket, process 0 when its port answers."""
    import socket

    server = socket.create_server(("127.0.0.1", 0)) if pid == 1 else None
    port = server.getsockname()[1] if server else free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kerascope", "train", str(photos), "--recipe", "lenet", "-o",
         str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(pid)],
        env=_env(KERASCOPE_COORDINATOR_TIMEOUT="300"), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        try:
            if server:
                server.settimeout(0.2)
                server.accept()
            else:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        if server:
            server.close()
    whom = "the coordinator" if pid else "the other processes"
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("kerascope:")]
    assert lines == [f"kerascope: interrupted while waiting for {whom} at 127.0.0.1:{port}"]
    assert not (tmp_path / "run").exists()
