"""onnxruntime's spinning threads: two `classify` processes side by side, spinning on vs off.

kerascope's sessions (`onnx_export.cache.cpu_session`) turn spinning off; this runs the same
job with onnxruntime's default (spinning on) beside it, alternating, and prints img/s.

    python benchmarks/onnx_spinning.py [--images 192] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


def child(mode: str, folder: str) -> None:
    """Classify ``folder`` three times (after a warm-up); print the last two runs' img/s."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if mode == "spin":  # onnxruntime's default: drop the entries kerascope sets
        import onnxruntime as ort

        add = ort.SessionOptions.add_session_config_entry

        def keep_spinning(self, key, value):
            if "allow_spinning" not in key:
                add(self, key, value)

        ort.SessionOptions.add_session_config_entry = keep_spinning
    import kerascope
    from kerascope.zoo.models import load_model

    clf = load_model("efficientnet_lite0")
    kerascope.classify(folder, model=clf, top=1)
    for _ in range(2):
        start = time.perf_counter()
        n = len(kerascope.classify(folder, model=clf, top=1))
        print(n / (time.perf_counter() - start), flush=True)


def make_folder(n: int) -> str:
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    folder = Path(tempfile.mkdtemp(prefix="kerascope-spin-"))
    for i in range(n):
        image = Image.open(data / PHOTOS[i % len(PHOTOS)]).convert("RGB")
        image.save(folder / f"{i:04d}.jpg", quality=90)
    return str(folder)


def pair(mode: str, folder: str) -> float:
    """Two processes at once; their img/s summed (median of each one's runs)."""
    cmd = [sys.executable, __file__, "--child", mode, folder]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"the {mode} child failed ({p.returncode})")
        rates.append(statistics.median(float(line) for line in out.split()))
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    folder = make_folder(args.images)
    results: dict[str, list[float]] = {"spin": [], "no spin (kerascope)": []}
    for _ in range(args.rounds):
        results["spin"].append(pair("spin", folder))
        results["no spin (kerascope)"].append(pair("nospin", folder))
    print(f"two classify processes side by side, {args.images} JPEGs each, {os.cpu_count()} CPUs")
    for mode, rates in results.items():
        print(f"{mode:>20}: {statistics.median(rates):6.1f} img/s together "
              f"(rounds: {', '.join(f'{r:.1f}' for r in rates)})")  # fmt: skip


if __name__ == "__main__":
    main()
