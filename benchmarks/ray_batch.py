"""`kerascope batch classify` throughput: one process vs Ray with 1 and 2 workers, one run.

Why: Ray Data buys scale-out (more nodes, more model copies) for a fixed price per job (start
Ray, start actors, load the model in each). This prints both, on the same JPEGs: random crops
of scikit-image's real photos, re-encoded at camera-ish sizes.

    python benchmarks/ray_batch.py                # 2,000 JPEGs, block size 128
    python benchmarks/ray_batch.py -n 500 --block-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` JPEGs: random crops (40-100 %) of the four skimage photos, 320-640 px wide."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    photos = []
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"):
        with Image.open(data / name) as img:
            photos.append(img.convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        width = int(rng.integers(320, 641))
        crop = photo.crop((x, y, x + cw, y + ch))
        crop = crop.resize((width, max(1, round(ch * width / cw))), Image.Resampling.BILINEAR)
        path = folder / f"img_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import ray

    import kerascope
    from kerascope.scale import run_batch

    root = Path(tempfile.mkdtemp(prefix="kerascope-ray-bench-"))
    try:
        images = root / "images"
        images.mkdir()
        made = timed(lambda: make_jpegs(images, args.n))
        print(f"{args.n} JPEGs written in {made:.1f} s under {images}; "
              f"{os.cpu_count()} CPU core(s)", flush=True)  # fmt: skip
        clf = kerascope.load_model("efficientnet_lite0")
        kerascope.classify(str(images / "img_00000.jpg"), model=clf)  # compile / convert once
        n = args.n
        rows = []
        t = timed(lambda: kerascope.classify(str(images), model=clf, top=5,
                                             batch_size=args.batch_size))  # fmt: skip
        rows.append(("kerascope.classify (API, model loaded), 1 process", t, n / t))
        job = dict(top=5, block_size=args.block_size, batch_size=args.batch_size)
        t = timed(lambda: run_batch("classify", [str(images)], root / "single", **job))
        rows.append(("kerascope batch classify, no --ray (1 process)", t, n / t))

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 2**20,
                 include_dashboard=False, logging_level="WARNING")  # fmt: skip
        ray_init = time.perf_counter() - start
        fixed = {}
        for workers in (1, 2):
            # A job of one image per worker: the per-job price (actors start, import Keras,
            # load the model, open the onnx session), paid again by every job.
            one = root / f"one-{workers}"
            (one / "in").mkdir(parents=True)
            for i in range(workers):
                shutil.copy(images / f"img_{i:05d}.jpg", one / "in")
            tiny = dict(job, block_size=1)
            fixed[workers] = timed(
                lambda w=workers, o=one, j=tiny: run_batch(
                    "classify", [str(o / "in")], o / "out", cluster="local", workers=w, **j
                )
            )
            t = timed(
                lambda w=workers: run_batch(
                    "classify", [str(images)], root / f"ray{w}", cluster="local", workers=w, **job
                )
            )
            rows.append((f"Ray Data, {workers} worker(s), whole job", t, n / t))
            steady = t - fixed[workers]
            rows.append((f"Ray Data, {workers} worker(s), less the per-job start", steady,
                         n / steady))  # fmt: skip
        ray.shutdown()
        print(f"\n{'':52s}{'seconds':>10s}{'img/s':>10s}")
        for name, seconds, rate in rows:
            print(f"{name:52s}{seconds:10.1f}{rate:10.1f}")
        print(f"\nfixed costs: ray.init (local, {os.cpu_count()} CPUs) {ray_init:.1f} s; per job "
              f"(actor start + model load: 1 image a worker) {fixed[1]:.1f} s with 1 worker, "
              f"{fixed[2]:.1f} s with 2")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
