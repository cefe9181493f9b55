"""`explain` of JPEG files with the pictures written, in images per second: the figure issue 18
sets a target for (>= 1,000 img/s on an H200), measured end to end through
`kerascope.cam.save.save_explanations` (decode, forward, gradient, maps, drawing, JPEG encode,
atomic write) into a fresh output folder each repeat.

The files are the scikit-image photos resized to 500x375 (the size of the GPU benchmark's
JPEGs) and cycled up to ``--files``. One warm-up job compiles; the median of ``--repeats`` jobs
is reported (min - max). ``--engine keras`` is the Keras/JAX path a GPU uses (on a CPU the
default engine is onnxruntime).

    KERAS_BACKEND=jax python benchmarks/explain_files.py --files 64 --batch-size 32 \
        --engine keras [--precision bfloat16] [--method gradcam] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def make_files(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> list[str]:
    """``count`` JPEGs of real photos at ``size`` (width, height), cycling the photos."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    photos = [Image.open(data / n).convert("RGB").resize(size) for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        photos[i % len(photos)].save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default=None, help="keras or onnx (default: kerascope's choice)")
    ap.add_argument("--precision", default=None, help="auto, float32, bfloat16 (if supported)")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--folder", default=None, help="existing JPEG folder instead of generated")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    if args.engine:
        os.environ["KERASCOPE_ENGINE"] = args.engine

    from kerascope.cam.save import save_explanations
    from kerascope.zoo.models import load_model

    work = Path(tempfile.mkdtemp(prefix="kerascope-explain-files-"))
    try:
        if args.folder:
            inputs = sorted(str(p) for p in Path(args.folder).glob("*.jp*g"))[: args.files]
        else:
            inputs = make_files(work / "in", args.files)
        clf = load_model(args.model)
        extra = {}
        if args.precision and "precision" in inspect.signature(save_explanations).parameters:
            extra["precision"] = args.precision
        elif args.precision:
            print("this version of save_explanations has no precision option: float32")
        rates = []
        for rep in range(args.repeats + 1):  # the first job compiles: not counted
            out = work / f"out{rep}"
            start = time.perf_counter()
            saved = save_explanations(
                inputs, out, clf, args.method, batch_size=args.batch_size, **extra
            )
            seconds = time.perf_counter() - start
            assert all(s.ok for s in saved), [s.error for s in saved if not s.ok][:3]
            assert len(list(out.rglob("*-output.jpg"))) == len(inputs)
            if rep:
                rates.append(len(inputs) / seconds)
            print(f"job {rep}{' (warm-up)' if not rep else ''}: {len(inputs) / seconds:.1f} img/s")
            shutil.rmtree(out)
        result = {
            "files": len(inputs),
            "batch_size": args.batch_size,
            "engine": os.environ.get("KERASCOPE_ENGINE", "auto"),
            "precision": args.precision or "default",
            "method": args.method,
            "model": args.model,
            "img_per_s_median": statistics.median(rates),
            "img_per_s_min": min(rates),
            "img_per_s_max": max(rates),
            "cpus": os.cpu_count(),
        }
        print(
            f"explain {args.method} with pictures, {len(inputs)} files, batch {args.batch_size}, "
            f"engine {result['engine']}: {result['img_per_s_median']:.1f} img/s "
            f"[{min(rates):.1f} - {max(rates):.1f}]"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
