"""Compilations and wall time of classify on the Keras/JAX engine, for jobs whose size is not a
multiple of the batch size (issue 18: "no recompiles").

Run (the JAX path is forced; on a CPU the default engine would be onnxruntime)::

    KERAS_BACKEND=jax KERASCOPE_ENGINE=keras python benchmarks/classify_compiles.py \
        [--images 37] [--batch-size 16] [--again 37,21] [--precision float32]

It writes ``--images`` real photos (scikit-image's, as JPEGs of varied sizes) to a temporary
folder, loads the default model, then classifies the folder once and again for each size in
``--again`` (the first that many files), printing per call the wall time and the XLA
compilations JAX logged during it (``jax_log_compiles``), so every compile is counted, not only
the forward's. CPU seconds (all threads of the process) are printed beside the wall time: on
a shared machine they are the steadier number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("KERASCOPE_ENGINE", "keras")

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png")  # fmt: skip


def write_photos(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs cycled from scikit-image's colour photos, each at a different size."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    sources = [data / p for p in PHOTOS if (data / p).exists()]
    paths = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as img:
            rgb = img.convert("RGB")
        side = 200 + 13 * i
        rgb = rgb.resize((side, int(side * rgb.height / rgb.width)))
        path = folder / f"photo_{i:03d}.jpg"
        rgb.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=37)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--again", default="37,21,30,1", help="sizes of the later calls")
    parser.add_argument("--precision", default=None, help="passed on when given (new API)")
    args = parser.parse_args()

    import jax

    import kerascope
    from kerascope.testing import count_compiles

    extra = {"precision": args.precision} if args.precision else {}
    with count_compiles() as counter, tempfile.TemporaryDirectory() as tmp:
        clf = kerascope.load_model("efficientnet_lite0", **extra)
        paths = write_photos(Path(tmp), args.images)
        sizes = [args.images] + [int(s) for s in args.again.split(",") if s]
        print(f"engine={os.environ.get('KERASCOPE_ENGINE')} batch={args.batch_size} "
              f"jax={jax.__version__} backend={jax.default_backend()}")  # fmt: skip
        for call, n in enumerate(sizes, 1):
            before = len(counter.names)
            start, cpu = time.perf_counter(), time.process_time()
            results = kerascope.classify([str(p) for p in paths[:n]], clf,
                                         batch_size=args.batch_size, **extra)  # fmt: skip
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            new = counter.names[before:]
            top = results[0].predictions[0].name
            print(f"call {call}: {n} images  {wall:6.2f} s wall {cpu:6.2f} s CPU  "
                  f"{len(new)} compilations {sorted(set(new))}  first={top!r}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
