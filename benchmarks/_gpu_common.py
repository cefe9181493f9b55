"""benchmarks/gpu.py's settings, sizes and data: what both sides of the benchmark share."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# A GPU user's batch sizes (the peer's DataLoader uses 256): the CLI default of 32 is a CPU one.
CLASSIFY_BATCH = 256
EXPLAIN_BATCH = 128
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # _timing

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")  # fmt: skip


@dataclass
class Sizes:
    """How much work each row does; ``quick`` is a CPU smoke run of the same code paths."""

    batch: int = 256  # model forward batch
    steps: int = 20  # forward calls per timed window
    repeats: int = 3  # interleaved repeats per row
    arrays: int = 2048  # classify of in-memory arrays
    jpegs: int = 3000  # the JPEG folder
    jpeg_size: tuple[int, int] = (500, 375)
    explain_files: int = 1024
    train_images: int = 1200  # 2 classes
    train_batch: int = 256
    image_size: int = 224  # training
    transfer_epochs: int = 8
    finetune_epochs: str = "1,8"
    peer_epochs: int = 2  # peer training epochs per interleaved call
    workers: int = 16  # peer DataLoader workers (capped by the cores)
    budget: float = 455.0  # seconds for the whole script (setup included; gpu_run.sh: 540)
    # seconds per group: they and the setup (~25 s) fit in ``budget``; no group runs past its
    # own nor the script's deadline (each train run stops at its share of the train group)
    budgets: tuple = (("forward", 70), ("arrays", 25), ("folder", 40), ("compile", 25),
                      ("explain", 70), ("first", 55), ("train", 160))  # fmt: skip


QUICK = Sizes(batch=4, steps=2, repeats=2, arrays=24, jpegs=24, jpeg_size=(200, 150),
              explain_files=8, train_images=24, train_batch=4, image_size=64,
              transfer_epochs=3, finetune_epochs="1,3", peer_epochs=1, workers=2, budget=2400,
              budgets=(("forward", 600), ("arrays", 200), ("folder", 200), ("compile", 200),
                       ("explain", 300), ("first", 300), ("train", 900)))  # fmt: skip


class NotAvailable(Exception):
    """A row this version of kerascope (or this machine, for the peer) cannot run: n/a."""


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (an option other engineers are adding)."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def default_of(fn, name: str, fallback):
    import inspect

    try:
        value = inspect.signature(fn).parameters[name].default
    except (TypeError, ValueError, KeyError):
        return fallback
    return fallback if value is inspect.Parameter.empty else value


# ----------------------------------------------------------------------------------- data


def _photo_paths() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in PHOTOS if (data / name).is_file()]


def _write_jpegs(job: tuple) -> None:
    """Random crops (4:3, 40-100 % of the photo), flips and exposures, so no two files match."""
    import numpy as np
    from PIL import Image, ImageOps

    photo_path, targets, size, seed = job
    rng = np.random.default_rng(seed)
    photo = Image.open(photo_path).convert("RGB")
    w, h = photo.size
    for target in targets:
        cw = int(rng.uniform(0.4, 1.0) * min(w, h * 4 / 3))
        ch = int(cw * 3 / 4)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        pixels = np.asarray(crop, np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)


def _pixels_224(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR))


def make_data(root: Path, sizes: Sizes) -> dict:
    """``all/`` (the JPEG folder), ``train/<cat|coffee>/`` and ``arrays.npy`` (N x 224² x 3)."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    photos = _photo_paths()
    if not photos:
        raise RuntimeError("scikit-image's sample photos are missing")
    jobs = []
    folder = root / "all"
    folder.mkdir(parents=True)
    chunk = max(1, sizes.jpegs // (4 * len(photos)))
    names = [folder / f"{i:05d}.jpg" for i in range(sizes.jpegs)]
    for k, start in enumerate(range(0, len(names), chunk)):
        jobs.append((photos[k % len(photos)], names[start : start + chunk], sizes.jpeg_size, k))
    train = root / "train"
    per_class = sizes.train_images // 2
    for c, (label, photo) in enumerate((("cat", "chelsea.png"), ("coffee", "coffee.png"))):
        (train / label).mkdir(parents=True)
        targets = [train / label / f"{i:04d}.jpg" for i in range(per_class)]
        path = photos[0].parent / photo
        for k, start in enumerate(range(0, per_class, 50)):
            jobs.append((path, targets[start : start + 50], sizes.jpeg_size, 1000 + 100 * c + k))
    sources = [names[i % len(names)] for i in range(sizes.arrays)]
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_jpegs, jobs))
        arrays = np.stack(list(pool.map(_pixels_224, sources, chunksize=64)))
    np.save(root / "arrays.npy", arrays)
    return {"folder": str(folder), "train": str(train), "arrays": str(root / "arrays.npy"),
            "files": [str(p) for p in names]}  # fmt: skip
