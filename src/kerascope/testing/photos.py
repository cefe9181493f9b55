"""Small labelled folders cut from scikit-image's real photos, for tests and benchmarks that
train: made in a given folder, the same for a given seed, in a second or two."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def skimage_data() -> Path:
    """The folder of scikit-image's bundled photos (chelsea the cat, coffee, astronaut, ...)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def cat_and_coffee(root: Path, n: int = 24, size: int = 40, seed: int = 1) -> Path:
    """Two classes of colour crops (chelsea the cat, coffee), random place and scale, ``n`` of
    each at ``size`` px: ``root/cat/*.jpg``, ``root/coffee/*.jpg``. Why: an easy real-photo
    task whose accuracy a few epochs can move."""
    from PIL import Image

    data = skimage_data()
    rng = np.random.default_rng(seed)
    for name, file in (("cat", "chelsea.png"), ("coffee", "coffee.png")):
        with Image.open(data / file) as img:
            photo = img.convert("RGB")
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            s = int(rng.uniform(0.5, 0.9) * min(photo.size))
            x, y = rng.integers(0, photo.width - s), rng.integers(0, photo.height - s)
            crop = photo.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR)
            crop.save(root / name / f"{i:03d}.jpg", quality=90)
    return root


def grey_photo_crops(root: Path, n_train: int = 24, n_val: int = 8, size: int = 96) -> Path:
    """Random grey crops of three real photos (astronaut, cat, coffee) in ``root/train`` and
    ``root/validation`` (drawn separately), 96 px by default.

    Grey, with random scale, brightness and mirroring, so colour alone does not give the class
    away and a small network trained from scratch for two epochs is near chance: the task on
    which a pretrained backbone must beat training from scratch.
    """
    from PIL import Image, ImageOps

    data = skimage_data()
    rng = np.random.default_rng(0)
    photos = {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png"}
    for split, n in (("train", n_train), ("validation", n_val)):
        for name, file in photos.items():
            with Image.open(data / file) as img:
                photo = ImageOps.grayscale(img).convert("RGB")
            w, h = photo.size
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                s = int(rng.uniform(0.35, 0.7) * min(w, h))
                x, y = rng.integers(0, w - s), rng.integers(0, h - s)
                crop = photo.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = ImageOps.mirror(crop)
                a = np.asarray(crop, np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
                out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
                out.save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root
