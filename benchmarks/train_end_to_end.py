"""The default `kerascope train --recipe finetune` end to end, timed as a user runs it.

Builds a two-class folder of 300x300 JPEG photos (random crops, flips and exposures of
scikit-image's cat and coffee photos; 2,160 images, so the default 20 % validation split
leaves 1,728 to train on, as in the issue's report), then runs the CLI in a new process and
prints the wall time (dataset scan, decode cache, both stages, report), the validation
accuracy and each stage's steady training img/s (the median of history.csv's
``images_per_second`` over every epoch but the stage's first, which pays compilation). With
``--engine keras`` the whole-graph path is timed instead (hours on 2 cores; the GPU path).

    python benchmarks/train_end_to_end.py [--images 2160] [--engine auto] [--precision auto]
        [--batch-size N] [--epochs N[,N]] [--data FOLDER] [--output RUN]

:func:`train_throughput` is the same as a function, for a GPU benchmark, e.g. the issue's
``kerascope train DATA --recipe transfer --model efficientnet_lite0 --epochs 3 --batch-size 256
--engine keras --precision bfloat16 -o RUN``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def make_photos(root: Path, total: int, size: int = 300) -> Path:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    rng = np.random.default_rng(0)
    for name, file in (("cat", "chelsea.png"), ("coffee", "coffee.png")):
        photo = Image.open(data / file).convert("RGB")
        w, h = photo.size
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(total // 2):
            s = int(rng.uniform(0.4, 0.9) * min(w, h))
            x, y = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
            crop = photo.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            pixels = np.asarray(crop, np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
            out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            out.save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def steady_rates(run: Path) -> dict[int, float]:
    """{stage: median img/s of its epochs after the first} from a run's ``history.csv``
    (the same rule as ``kerascope.training.progress.steady_images_per_second``)."""
    import csv

    with (run / "history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    stages: dict[int, list[float]] = {}
    for row in rows:
        stages.setdefault(int(row["stage"]), []).append(float(row["images_per_second"] or "nan"))
    return {stage: statistics.median(rates[1:]) for stage, rates in stages.items()
            if len(rates) > 1}  # fmt: skip


def train_throughput(data: str | Path, output: str | Path, recipe: str = "transfer",
                     model: str = "efficientnet_lite0", epochs: str = "3",
                     batch_size: int = 256, engine: str = "keras", precision: str = "auto",
                     extra: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Run ``kerascope train`` in a new process and return its steady img/s per stage, the
    wall time and the outcome (``output`` must be new: it is the run directory)."""
    command = [sys.executable, "-m", "kerascope", "train", str(data), "--recipe", recipe,
               "--model", model, "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--engine", engine, "--precision", precision, "-o", str(output),
               *extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    run = Path(output)
    config_text = (run / "config.yaml").read_text()
    resolved = next((line.split(":", 1)[1].strip() for line in config_text.splitlines()
                     if line.startswith("precision:")), precision)  # fmt: skip
    return {"steady_images_per_second": steady_rates(run), "seconds": seconds,
            "precision": resolved,
            "outcome": json.loads((run / "run_state.json").read_text())["outcome"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2160, help="images in all, both classes")
    parser.add_argument("--engine", default="auto", choices=("auto", "keras", "onnx"))
    parser.add_argument("--recipe", default="finetune")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", default=None, help="per stage, e.g. 3 or 2,3 (default: "
                        "the recipe's)")  # fmt: skip
    parser.add_argument("--data", help="train on this folder instead of generated photos")
    parser.add_argument("--output", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_photos(Path(tmp) / "photos", args.images)
        run = Path(args.output) if args.output else Path(tmp) / "run"
        extra = ("--epochs", args.epochs) if args.epochs else ()
        command = [sys.executable, "-m", "kerascope", "train", str(data), "--recipe",
                   args.recipe, "-o", str(run), "--engine", args.engine, "--precision",
                   args.precision, "--batch-size", str(args.batch_size), *extra]  # fmt: skip
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        outcome = json.loads((run / "run_state.json").read_text())["outcome"]
        rates = steady_rates(run)
    steady = ", ".join(f"stage {k} {v:,.0f} img/s" for k, v in rates.items()) or "n/a"
    print(f"\n{args.recipe} on {data} (engine {args.engine}, precision {args.precision}): "
          f"{seconds / 60:.1f} min end to end, {outcome['epochs']} epochs, validation "
          f"accuracy {outcome['val_accuracy']:.3f}; steady training {steady}")  # fmt: skip


if __name__ == "__main__":
    main()
