"""Issue 21's training tools, measured on real photos: the LR finder's check and what the
regularisers and augmentation policies cost on the CPU split path.

Data: grey crops of three scikit-image photos (astronaut, chelsea the cat, coffee), random
scale, brightness and mirroring, 24 training + 8 validation per class (as tests/test_train.py
makes them). Recipe ``transfer`` (frozen EfficientNet-Lite0 with its real ported weights).

1. LR finder: the sweep's suggestion, then one epoch at the default rate (rmsprop 1e-3) and one
   at the suggestion, same seed; prints both validation accuracies (the issue's check: the
   suggestion within 2 points of the default or better).
2. Cost: three epochs at 96 px, batch 16, with the seed augmentation alone and with each
   addition; prints images/second of training per epoch (epoch 1 includes compilation) and
   the validation accuracy.

    python benchmarks/training_tools.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

from kerascope.testing import grey_photo_crops  # noqa: E402


def main() -> None:
    from kerascope.data.augment import AugmentConfig
    from kerascope.training import train
    from kerascope.training.lr_find import find_lr

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crops = grey_photo_crops(root / "crops")
        sweep = find_lr(crops, "transfer", image_size=64, batch_size=16, plot=None)
        common = dict(recipe="transfer", epochs=1, image_size=64, batch_size=16, seed=0,
                      augment=False, progress=False)  # fmt: skip
        default = train(crops, output=root / "default", **common)
        found = train(crops, output=root / "found", lr=sweep.suggestion, **common)
        print(f"lr finder: suggested {sweep.suggestion:.2g} ({sweep.trained}); one epoch: "
              f"default 1e-3 -> val accuracy {default.val_accuracy:.3f}, suggested -> "
              f"{found.val_accuracy:.3f}", flush=True)  # fmt: skip
        runs = {
            "seed augmentation": {},
            "+ trivialaugment": {"augment": AugmentConfig(policy="trivialaugment")},
            "+ randaugment, mixup 0.2, smoothing 0.1": {
                "augment": AugmentConfig(policy="randaugment"), "mixup": 0.2,
                "label_smoothing": 0.1},
            "+ cutmix 1.0": {"cutmix": 1.0},
        }  # fmt: skip
        for i, (name, extra) in enumerate(runs.items()):
            run = train(crops, recipe="transfer", output=root / f"cost{i}", epochs=3,
                        image_size=96, batch_size=16, seed=0, progress=False,
                        **extra)  # fmt: skip
            rates = [row["images_per_second"] for row in run.history]
            print(f"{name}: img/s per epoch {rates}, val accuracy {run.val_accuracy:.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
