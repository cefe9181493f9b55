"""How far to trust py-spy's ``--gil`` count, the figure ``benchmarks/decode.py --gil`` reports:
a loop whose GIL time is known (pure Python, then SHA-256 of 1 MB, which releases the GIL) times
its own parts while py-spy samples it, in its default mode (the process paused for each sample)
and ``--nonblocking``, with and without idle threads beside it (kerascope's processes have
dozens: decode pools, JAX). Needs ``py-spy`` on PATH.

    python benchmarks/gil_calibration.py [--iterations 3000] [--threads 0,60]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BUFFER = b"x" * (1 << 20)


def python_part(n: int = 3000) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def released_part() -> bytes:
    return hashlib.sha256(BUFFER).digest()


def loop(iterations: int, idle_threads: int, out: str) -> None:
    """The sampled child: writes the GIL-held milliseconds per iteration it timed itself."""
    stop = threading.Event()
    for _ in range(idle_threads):
        threading.Thread(target=stop.wait, daemon=True).start()
    held = 0.0
    for _ in range(iterations):
        start = time.perf_counter()
        python_part()
        held += time.perf_counter() - start
        released_part()
    Path(out).write_text(f"{held / iterations * 1e3:.4f}")


def counted(raw: Path, iterations: int) -> float:
    """GIL-held milliseconds per iteration by py-spy's samples (1 kHz: 1 sample = 1 ms)."""
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "python_part (" in stack or "released_part (" in stack:
            samples += int(count)
    return samples / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--threads", default="0,60", help="idle threads beside the loop")
    parser.add_argument("--loop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop is not None:
        return loop(args.iterations, args.loop, args.out)
    spy = shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy is not on PATH (pip install py-spy)")
    print(f"{'idle threads':>12s} {'py-spy mode':14s} {'loop timed':>11s} {'py-spy counted':>15s}")
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.txt", Path(tmp) / "timed.txt"
        child = [sys.executable, __file__, "--iterations", str(args.iterations), "--out", str(out)]
        subprocess.run([*child, "--loop", "0"], check=True)
        print(f"{0:12d} {'no py-spy':14s} {out.read_text():>8s} ms")
        for threads in (int(t) for t in args.threads.split(",")):
            for mode in ("paused", "nonblocking"):
                flags = ["--nonblocking"] if mode == "nonblocking" else []
                cmd = [spy, "record", "--gil", *flags, "-r", "1000", "-f", "raw", "-o",
                       str(raw), "--", *child, "--loop", str(threads)]  # fmt: skip
                subprocess.run(cmd, capture_output=True, check=True)
                timed = out.read_text()
                print(f"{threads:12d} {mode:14s} {timed:>8s} ms "
                      f"{counted(raw, args.iterations):12.4f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
