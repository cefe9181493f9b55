"""`kerascope serve` throughput and latency beside `kerascope.classify` on the same photos.

Two real servers on loopback (dynamic batching on: --max-batch 32 --max-wait-ms 5; off:
--max-batch 1), each driven by 1, 4 and 16 concurrent clients (threads, one HTTP connection
each, one photo per request, multipart as a browser sends it). The reference is the batch path
of `kerascope classify` (the Python API, batch 32) on the same photos, decoding included, in the
same run. Every contender is measured once per repeat, in turn, so a neighbour's load on a
shared machine hits them all alike (see _timing.interleaved).

    .venv/bin/python benchmarks/serve.py [--seconds 6] [--repeats 3]

Target (issue 11): at 16 clients with batching on, >= 0.8x the batch path's images/s. The
clients run on the same cores as the server, so the figure is a floor for a real deployment.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from _timing import interleaved, spread

os.environ.setdefault("KERAS_BACKEND", "jax")
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


def photos() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in PHOTOS]


@contextmanager
def server(*args: str):
    """A `kerascope serve` subprocess on a free loopback port; yields its URL."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "kerascope.serve", "--port", str(port), "--log-level",
           "warning", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"server failed:\n{log.read().decode(errors='replace')}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def load(url: str, clients: int, seconds: float, payloads: list[tuple[str, bytes]], lat: list):
    """Requests/s of ``clients`` threads posting one photo each, for ``seconds``."""
    import httpx

    stop = float("inf")  # set once every client is connected and waiting
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            c.get("/healthz")  # connect before the clock starts
            barrier.wait()
            j = i
            while time.perf_counter() < stop:
                name, data = payloads[j % len(payloads)]
                t = time.perf_counter()
                r = c.post("/v1/classify", files=[("file", (name, data))])
                if r.status_code != 200:
                    raise SystemExit(f"{r.status_code}: {r.text}")
                lat.append(time.perf_counter() - t)
                counts[i] += 1
                j += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    stop = start + seconds
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed window per measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()

    import kerascope
    from kerascope.inference import engine_name
    from kerascope.zoo.models import load_model

    paths = photos()
    payloads = [(p.name, p.read_bytes()) for p in paths]
    clf = load_model(args.model)
    batch = paths * 8  # 32 photos: one full batch of the CLI's default size
    kerascope.classify(batch, model=clf)  # warm: engine built, files in the page cache

    def classify_rate() -> float:
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < args.seconds:
            n += len(kerascope.classify(batch, model=clf, batch_size=32))
        return n / (time.perf_counter() - start)

    latencies: dict[str, list[float]] = {}
    with server("--model", args.model, "--max-batch", "32", "--max-wait-ms", "5") as on, \
            server("--model", args.model, "--max-batch", "1") as off:  # fmt: skip
        contenders = {"classify (API, batch 32)": classify_rate}
        for clients in (1, 4, 16):
            for label, url in (("on", on), ("off", off)):
                name = f"serve {clients:2d} clients, batching {label}"
                lat = latencies.setdefault(name, [])
                load(url, clients, 1.0, payloads, [])  # warm connections and threads
                contenders[name] = partial(load, url, clients, args.seconds, payloads, lat)
        print(
            f"model {args.model} on {engine_name(clf.model)}, {os.cpu_count()} CPUs, "
            f"{args.repeats} x {args.seconds:g} s windows, photos {', '.join(PHOTOS)}"
        )
        values = interleaved(contenders, args.repeats)

    # Each repeat's contenders ran back to back, so per-repeat ratios cancel most of the load
    # that neighbours put on a shared machine; the table shows their median.
    ref = np.asarray(values["classify (API, batch 32)"])
    head = ("contender", "images/s", "x classify*", "p50 ms", "p99 ms")
    print("\n{:34s} {:>22s} {:>10s} {:>8s} {:>8s}".format(*head))
    for name, vals in values.items():
        lat = latencies.get(name)
        p50, p99 = (f"{np.percentile(lat, q) * 1e3:8.1f}" for q in (50, 99)) if lat else ("", "")
        ratio = float(np.median(np.asarray(vals) / ref))
        print(f"{name:34s} {spread(vals):>22s} {ratio:10.2f} {p50:>8s} {p99:>8s}")
    print("* median over repeats of (contender / classify in the same repeat)")


if __name__ == "__main__":
    main()
