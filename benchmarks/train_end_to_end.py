"""The default `kerascope train --recipe finetune` end to end, timed as a user runs it.

Builds a two-class folder of 300x300 JPEG photos (random crops, flips and exposures of
scikit-image's cat and coffee photos; 2,160 images, so the default 20 % validation split
leaves 1,728 to train on, as in the issue's report), then runs the CLI in a new process and
prints the wall time (dataset scan, decode cache, both stages, report) and the validation
accuracy. With ``--engine keras`` the whole-graph path is timed instead (hours on 2 cores).

    python benchmarks/train_end_to_end.py [--images 2160] [--engine auto]
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2160, help="images in all, both classes")
    parser.add_argument("--engine", default="auto", choices=("auto", "keras", "onnx"))
    parser.add_argument("--recipe", default="finetune")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_photos(Path(tmp) / "photos", args.images)
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "kerascope", "train", str(data), "--recipe",
                   args.recipe, "-o", str(run), "--engine", args.engine]  # fmt: skip
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        outcome = json.loads((run / "run_state.json").read_text())["outcome"]
    print(f"\n{args.recipe} on {args.images} photos (300x300, 2 classes), engine {args.engine}: "
          f"{seconds / 60:.1f} min end to end, {outcome['epochs']} epochs, validation "
          f"accuracy {outcome['val_accuracy']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
