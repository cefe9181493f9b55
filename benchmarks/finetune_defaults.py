"""The default ``--recipe finetune`` beside the ``features`` ensemble (issue 21): test accuracy
and minutes on two real-photo tasks, each recipe with its defaults on the same split.

Data (built here from photos that ship with scikit-image, kerascope.testing):
  * photos: grey crops of astronaut, chelsea the cat and coffee (`grey_photo_crops`, 96 px),
    48 per class for training (the last 16 of them moved to a test folder) + 16 validation;
  * textures: brick, grass, gravel, moon surface (`textures.texture_crops`, 96 px), 40 train +
    16 validation + 16 test per class; not ImageNet classes.
Contenders: ``train(data, recipe="features")`` (EfficientNet-Lite0 + Lite1 pooled features,
concatenated, Dropout, Dense; Adam 1e-3, 10 epochs) and ``train(data, recipe="finetune")``
(head, then gradual unfreezing with discriminative one-cycle rates, epochs from the 15-minute
time budget, images at their own 96 px). Both use the validation folder for early stopping
and keep the weights of their lowest validation loss; accuracy is on the test folder
(`kerascope.evaluate`). The load average is printed beside each row: the machine may be
shared, and the time budget is wall-clock.

    python benchmarks/finetune_defaults.py [--budget MINUTES] [--only TASK] [--hard]

``--hard``: the same comparison on harder versions of both tasks (`hard_photos`: six photos,
small noisy crops at 64 px; `hard_textures`: smaller, noisier texture crops at 64 px).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")


def photos(root: Path) -> tuple[Path, Path]:
    """The real-photo task: (training folder with train/ and validation/, test folder)."""
    from kerascope.testing import grey_photo_crops

    data = grey_photo_crops(root / "data", n_train=48, n_val=16, size=96)
    for folder in sorted((data / "train").iterdir()):
        (root / "test" / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[-16:]:
            shutil.move(path, root / "test" / folder.name / path.name)
    return data, root / "test"


def textures(root: Path) -> tuple[Path, Path]:
    """The texture task: (training folder with train/ and validation/, test folder)."""
    from kerascope.testing.textures import texture_crops

    data = texture_crops(root / "data", {"train": 40, "validation": 16})
    texture_crops(root / "split", {"test": 16}, seed=1)
    return data, root / "split" / "test"


HARD_PHOTOS = {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png",
               "rocket": "rocket.jpg", "motorcycle": "motorcycle_left.png",
               "cameraman": "camera.png"}  # fmt: skip


def hard_photos(root: Path) -> tuple[Path, Path]:
    """Six photos, small grey crops (8-20 % of the photo's side) at 64 px with noise, 20
    training + 16 validation + 16 test per class: a task the ensemble does not solve."""
    from kerascope.testing.textures import texture_crops

    extra = dict(size=64, photos=HARD_PHOTOS, scale=(0.08, 0.2), noise=10.0)
    data = texture_crops(root / "data", {"train": 20, "validation": 16}, **extra)
    texture_crops(root / "split", {"test": 16}, seed=1, **extra)
    return data, root / "split" / "test"


def hard_textures(root: Path) -> tuple[Path, Path]:
    """The four textures from crops of 4-10 % of the photo's side at 64 px, more noise, 20
    training + 16 validation + 16 test per class."""
    from kerascope.testing.textures import texture_crops

    extra = dict(size=64, scale=(0.04, 0.1), noise=12.0)
    data = texture_crops(root / "data", {"train": 20, "validation": 16}, **extra)
    texture_crops(root / "split", {"test": 16}, seed=1, **extra)
    return data, root / "split" / "test"


def run(name: str, recipe: str, data: Path, test: Path, out: Path, budget: float | None) -> str:
    """One row: train with the recipe's defaults, score the saved model on ``test``."""
    from kerascope import evaluate
    from kerascope.training import train

    load = os.getloadavg()[0]
    started = time.perf_counter()
    extra = {"time_budget": budget} if budget is not None and recipe == "finetune" else {}
    result = train(data, recipe=recipe, output=out / recipe, progress=False, **extra)
    minutes = (time.perf_counter() - started) / 60
    scored = evaluate(result.run_dir, test, split="all", output=out / f"{recipe}-test",
                      top_losses=0, heatmaps=False)  # fmt: skip
    config = result.config
    epochs = "+".join(str(s["epochs"]) for s in config["stages"])
    ran = len(result.history)
    return (f"| {name} | {recipe} | {config['image_size'][0]} px | {epochs} planned, {ran} run "
            f"({config.get('epochs_rule', 'recipe')}) | {minutes:.1f} | "
            f"{result.val_accuracy:.3f} | {scored.accuracy:.3f} ({scored.n}) | "
            f"{load:.1f} / {os.getloadavg()[0]:.1f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, help="finetune's time budget in minutes "
                   "(default: the recipe's, 15)")  # fmt: skip
    p.add_argument("--only", choices=("photos", "textures", "hard-photos", "hard-textures"),
                   help="one task")  # fmt: skip
    p.add_argument("--hard", action="store_true", help="the two harder tasks instead")
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    print("| task | recipe | size | epochs per stage | minutes | val acc | test acc (n) "
          "| load before / after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|", flush=True)
    tasks = {"photos": photos, "textures": textures}
    if args.hard or (args.only or "").startswith("hard"):
        tasks = {"hard-photos": hard_photos, "hard-textures": hard_textures}
    with tempfile.TemporaryDirectory(prefix="finetune-defaults-") as tmp:
        for name, build in tasks.items():
            if args.only and name != args.only:
                continue
            data, test = build(Path(tmp) / name)
            for recipe in ("features", "finetune"):
                print(run(name, recipe, data, test, Path(tmp) / name / "runs", args.budget),
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
