"""Feature extraction speed per backbone, and the features recipe vs whole-graph transfer time.

Why: the HDF5 cache is only worth it if extraction is fast, and the features recipe only if
training on features computed once is much cheaper than training through a frozen backbone
every epoch. Both sides run here, on the same images, in one process.

    python benchmarks/features.py                    # crops of scikit-image photos, 3 classes
    python benchmarks/features.py --data DIR --epochs 5 --per-class 40
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def make_data(root: Path, per_class: int) -> Path:
    """Random crops of three scikit-image photos (the test suite's generator)."""
    import skimage

    from test_features import make_dataset

    data = Path(skimage.__file__).parent / "data"
    n_val = max(2, per_class // 3)
    names = ["chelsea", "coffee", "rocket"]
    return make_dataset(root, data, names, per_class - n_val, n_val)


def extraction(data: Path, out: Path, batch_size: int) -> list[tuple]:
    """(backbone, engine, build s, images/s cold, cache-hit s) per backbone."""
    import kerascope.bottleneck as kf
    from kerascope.data import scan_dataset

    dataset = scan_dataset(data)
    rows = []
    for name in BACKBONES:
        spec = kf.FeatureSpec.make(name)
        start = time.perf_counter()
        kf.forward_for(spec)  # build + convert, timed apart from the images
        built = time.perf_counter() - start
        start = time.perf_counter()
        store = kf.extract_features(dataset, [name], output=out, batch_size=batch_size)
        seconds = time.perf_counter() - start
        n = store.computed[spec.key]
        start = time.perf_counter()
        kf.extract_features(dataset, [name], output=out, batch_size=batch_size)
        hit = time.perf_counter() - start
        rows.append((name, _engine(), built, n / seconds, hit))
    return rows


def _engine() -> str:
    from kerascope.inference import on_cpu

    wanted = os.environ.get("KERASCOPE_ENGINE", "auto")
    return wanted if wanted != "auto" else ("onnx" if on_cpu() else "keras")


def training(data: Path, out: Path, epochs: int, backbone: str) -> list[tuple]:
    """(method, seconds, validation accuracy): the features recipe (frozen backbone run once
    per run by the split trainer) and transfer through the whole graph every epoch."""
    from kerascope.training import train

    rows = []
    start = time.perf_counter()
    run = train(data, recipe="features", output=out / "features_run", backbone=backbone,
                epochs=epochs, progress=False)  # fmt: skip
    rows.append((f"features recipe ({backbone})", time.perf_counter() - start,
                 run.final_val_accuracy))  # fmt: skip
    fit = sum(r["seconds"] or 0.0 for r in run.history)
    rows.append(("  of which epochs (head on features)", fit, run.final_val_accuracy))
    start = time.perf_counter()
    result = train(data, recipe="transfer", output=out / "transfer_run", backbone=backbone,
                   epochs=epochs, augment=False, progress=False, engine="keras")  # fmt: skip
    rows.append((f"transfer, whole graph ({backbone})", time.perf_counter() - start,
                 result.final_val_accuracy))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: generated crops)")
    parser.add_argument("--per-class", type=int, default=24, help="generated images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0", help="for the training rows")
    args = parser.parse_args()
    from kerascope.config import ensure_backend

    ensure_backend()  # before Keras is imported
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or make_data(tmp / "data", args.per_class)
        n = sum(1 for p in data.rglob("*") if p.is_file())
        print(f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
              f"{n} images in {data}")  # fmt: skip
        print(f"\n{'backbone':<20}{'engine':>8}{'build s':>9}{'img/s':>8}{'cache hit s':>13}")
        for name, engine, built, rate, hit in extraction(data, tmp / "bench.h5", args.batch_size):
            print(f"{name:<20}{engine:>8}{built:>9.1f}{rate:>8.1f}{hit:>13.2f}")
        print(f"\n{'training, ' + str(args.epochs) + ' epochs':<42}{'seconds':>9}{'val acc':>9}")
        for method, seconds, accuracy in training(data, tmp, args.epochs, args.backbone):
            print(f"{method:<42}{seconds:>9.1f}{np.float64(accuracy):>9.3f}")


if __name__ == "__main__":
    main()
