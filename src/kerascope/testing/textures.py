"""A texture task from photos that ship with scikit-image: brick, grass, gravel and the
moon's surface, none of them an ImageNet class (issue 21's check that fine-tuning learns
what the pretrained classes do not name).

Each image is a random square crop (a random scale of the 512 px photo), resized, turned by a
random multiple of 90 degrees, mirrored at random and given a random contrast and brightness,
with a little Gaussian noise; the photos are grey, so only texture tells the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .photos import skimage_data

TEXTURES = {"brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png",
            "moon": "moon.png"}  # fmt: skip


def texture_crops(
    root: Path,
    counts: dict[str, int] | None = None,
    size: int = 96,
    seed: int = 0,
    photos: dict[str, str] | None = None,
    scale: tuple[float, float] = (0.12, 0.4),
    noise: float = 6.0,
) -> Path:
    """``root/<split>/<class>/NNN.jpg`` for each ``{split: images per class}`` in ``counts``
    (default ``{"train": 40, "validation": 16}``), every split drawn separately from the same
    photos with ``seed``. Returns ``root``.

    ``photos``: ``{class: file in skimage's data folder}`` (default `TEXTURES`; any photos
    make a harder real-photo task from small grey crops); ``scale``: the crop's side as a
    share of the photo's shorter side; ``noise``: the Gaussian noise's standard deviation."""
    from PIL import Image

    counts = counts or {"train": 40, "validation": 16}
    data = skimage_data()
    rng = np.random.default_rng(seed)
    files, photos = photos or TEXTURES, {}
    for name, file in files.items():
        with Image.open(data / file) as image:
            photos[name] = image.convert("L")
    for split, n in counts.items():
        for name, photo in photos.items():
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            w, h = photo.size
            for i in range(n):
                s = int(rng.uniform(*scale) * min(w, h))
                x, y = rng.integers(0, w - s), rng.integers(0, h - s)
                crop = photo.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR)
                a = np.rot90(np.asarray(crop, np.float32), int(rng.integers(0, 4)))
                if rng.random() < 0.5:
                    a = a[:, ::-1]
                a = (a - a.mean()) * rng.uniform(0.6, 1.4) + a.mean() + rng.uniform(-40, 40)
                a = a + rng.normal(0, noise, a.shape)
                grey = np.clip(a, 0, 255).astype(np.uint8)
                Image.fromarray(grey).convert("RGB").save(folder / f"{i:03d}.jpg", quality=90)
    return Path(root)
