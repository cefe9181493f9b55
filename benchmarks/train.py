"""Training throughput of the transfer and finetune recipes: data pipeline vs in-memory arrays.

For each recipe stage (``transfer``: frozen EfficientNet-Lite0 + head; ``finetune`` stage 2:
top of the backbone unfrozen, SGD), the same compiled model is trained
  1. from a ``FolderSequence`` over JPEG files with its memory-mapped uint8 cache filled
     (what ``kerascope train`` does from epoch 2 on), and
  2. by a plain ``model.fit`` on the same images already decoded in a NumPy uint8 array,
and the ratio (1)/(2) is what the data pipeline costs (target >= 0.8). Timings exclude
compilation: steps are timed after ``--warmup`` steps, end of step to end of step.

    python benchmarks/train.py --steps 3 --warmup 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kerascope.data import FolderSequence  # noqa: E402
from kerascope.train import recipes  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def images_per_second(model, data, steps: int, warmup: int, batch: int, **fit_kwargs) -> float:
    timer = StepTimer()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0,
              shuffle=False, **fit_kwargs)  # fmt: skip
    times = timer.ends[warmup - 1 :]
    return batch * (len(times) - 1) / (times[-1] - times[0])


def make_jpegs(folder: Path, n: int, size: int = 320) -> list[tuple[str, int]]:
    """Noisy gradient JPEGs a little larger than the input, so decoding includes a resize."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    items = []
    for i in range(n):
        pixels = base + rng.normal(0, 40, (size, size, 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        items.append((str(path), i % 2))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    b, size = args.batch_size, args.image_size
    n = b * (args.steps + args.warmup)
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPU(s); "
          f"{args.backbone} at {size}px, batch {b}, {args.steps} timed steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        items = make_jpegs(Path(tmp), n)
        seq = FolderSequence(items, ["a", "b"], size, batch_size=b, shuffle=True,
                             cache=Path(tmp) / "cache")  # fmt: skip
        seq.fill_cache()
        x = np.concatenate([seq[i][0] for i in range(len(seq))])
        y = np.array([label for _, label in items], dtype=np.int32)
        for name in ("transfer", "finetune"):
            recipe = recipes.get_recipe(name)
            keras.utils.set_random_seed(0)
            model = recipes.build_model(recipe, 2, (size, size), recipe.augment, 0, args.backbone)
            stage = len(recipe.stages) - 1
            tuned = recipes.prepare_stage(model, stage, 0.2)
            s = recipe.stages[stage]
            model.compile(recipes.make_optimizer(s.optimizer, s.lr),
                          "sparse_categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
            t0 = time.perf_counter()
            pipeline = images_per_second(model, seq, args.steps, args.warmup, b)
            first = time.perf_counter() - t0
            arrays = images_per_second(model, x, args.steps, args.warmup, b, y=y, batch_size=b)
            label = f"{name} (stage {stage + 1}, {len(tuned)} backbone layers trained)"
            print(f"{label:<48} FolderSequence+cache {pipeline:7.1f} img/s | in-memory fit "
                  f"{arrays:7.1f} img/s | ratio {pipeline / arrays:.2f} "
                  f"(first call incl. compile {first:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
