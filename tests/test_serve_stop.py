"""A stopping `kerascope serve`: requests in progress get up to 5 s, then a JSON 503, and
the process ends without waiting for a model pass its worker thread still runs."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from tests.serve_server import httpx, server_process
from tests.test_serve_limits import post_scorecam, real_server, scorecam_running, slow_cam_run


@real_server
def test_a_stopped_server_does_not_wait_for_a_running_pass(tmp_path, photo_paths):
    """Before: Ctrl-C or SIGTERM left the process waiting at exit for the explain pass its
    worker thread ran (132 s and 201 s for a long one)."""
    cat = photo_paths["chelsea"].read_bytes()
    run = slow_cam_run(tmp_path, channels=1024)  # a pass of far more than the 5 s grace
    args = ("--model", str(run), "--allow-expensive", "--max-expensive-images", "2")
    out: dict = {}
    with server_process(*args) as server:

        def cut_off() -> None:  # its connection is closed by the stop: no answer to read
            with contextlib.suppress(httpx.HTTPError, ValueError):
                post_scorecam(server.url, 2, cat, out, "sc")

        worker = threading.Thread(target=cut_off)
        worker.start()
        scorecam_running(server.url, 2, out)
        stopped = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        code = server.proc.wait(120)
        took = time.monotonic() - stopped
        log = server.log()
        worker.join(60)
    assert code == 130 and took < 15, (took, log)
    assert "a model pass still running is not waited for" in log, log
    status, _, body, _, _ = out["sc"]  # past the 5 s grace: a JSON 503, not uvicorn's 500
    assert status == 503 and "stopped before this request was answered" in body["error"], body


def test_decode_and_model_threads_do_not_hold_the_exit():
    """Before: the decode pool was a standard ThreadPoolExecutor, whose threads the interpreter
    joins at exit: a SIGTERM'd server waited for the decode still running (37.9 s for a scan
    bomb, 14.5 s for a 400 MP PNG). Every pool of the server is now a `DaemonPool`."""
    import subprocess
    import sys

    code = (
        "import time\n"
        "from kerascope.serve.pools import DaemonPool, Lanes\n"
        "lanes = Lanes(30.0)\n"
        "for pool in (lanes.headers, lanes.light, lanes.heavy, DaemonPool(1, 'model')):\n"
        "    pool.submit(time.sleep, 120)\n"
        "time.sleep(0.5)\n"
        "print('leaving', flush=True)\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "leaving" in done.stdout, done.stderr
    assert time.monotonic() - start < 30
