"""Data augmentation as Keras preprocessing layers, with the classic ImageDataGenerator settings.

The cats-vs-dogs tutorials augment with ``ImageDataGenerator(rotation_range=40,
width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True, fill_mode='nearest')``. ImageDataGenerator is gone from Keras 3 and
needs TensorFlow; the same transformations exist as ``keras.layers.Random*`` layers, which run
on every backend, on the device, inside the model, and only while training (at inference they
pass images through unchanged, so a saved model needs no separate preprocessing switch).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kerascope.errors import ConfigError  # noqa: E402
from kerascope.images import load_image, resize  # noqa: E402

FILL_MODES = ("reflect", "wrap", "constant", "nearest")


@dataclass
class AugmentConfig:
    """Random transformations applied to training images, in ImageDataGenerator's terms.

    Attributes:
        rotation: maximum rotation in degrees, either way (``rotation_range``).
        width_shift: maximum horizontal shift as a fraction of the width.
        height_shift: maximum vertical shift as a fraction of the height.
        shear: maximum horizontal shear as a fraction of the height (``tan`` of the angle).
            ImageDataGenerator read ``shear_range`` in radians when the tutorial was written
            (later versions: degrees, making 0.2 a no-op); 0.2 rad has ``tan`` 0.203, so
            ``RandomShear(x_factor=0.2)`` is the tutorial's transformation.
        zoom: maximum zoom in or out, as a fraction; height and width are zoomed
            independently, as ImageDataGenerator does.
        horizontal_flip: mirror half the images left-right.
        vertical_flip: mirror half the images upside down (off: few photos are symmetric so).
        fill_mode: how pixels moved in from outside the image are filled; ``"nearest"``
            repeats the edge, as in the tutorial.
        rescale: the tutorial's ``1/255``, kept so its settings round-trip. It is *not*
            applied by :func:`build_augmentation`: kerascope models take 0..255 pixels and
            normalise inside the graph, so scaling belongs to the model (the scratch recipe
            starts with ``keras.layers.Rescaling(config.rescale)``), never to the data.
    """

    rotation: float = 40.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    rescale: float | None = 1.0 / 255.0

    def __post_init__(self) -> None:
        """Refuse values the random layers would misread; ConfigError (a ValueError) names
        the setting, so the CLI prints one line."""
        if self.fill_mode not in FILL_MODES:
            raise ConfigError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        for name in ("rotation", "width_shift", "height_shift", "shear", "zoom"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rotation > 180:
            raise ConfigError(f"rotation is in degrees and at most 180, got {self.rotation}")
        if self.zoom >= 1:
            raise ConfigError(f"zoom must be below 1 (a fraction), got {self.zoom}")
        for name in ("width_shift", "height_shift", "shear"):
            if getattr(self, name) > 1:
                raise ConfigError(f"{name} is a fraction and at most 1, got {getattr(self, name)}")


def build_augmentation(
    config: AugmentConfig | None = None, seed: int | None = None, name: str = "augmentation"
) -> keras.Sequential:
    """A ``keras.Sequential`` of random layers to put at the front of a model being trained.

    Transformations set to zero are left out. Each layer gets its own seed derived from
    ``seed`` so a seeded pipeline is reproducible on every backend. Output is float32 in
    the input's 0..255 range; the layers are identities when ``training`` is false.

    Example:
        >>> aug = build_augmentation(AugmentConfig(), seed=0)  # doctest: +SKIP
        >>> x = aug(images, training=True)  # doctest: +SKIP
    """
    c = config or AugmentConfig()
    fill = {"fill_mode": c.fill_mode, "interpolation": "bilinear"}
    layers: list[keras.layers.Layer] = []

    def seeded() -> int | None:
        return None if seed is None else seed + len(layers)

    if c.horizontal_flip or c.vertical_flip:
        mode = "horizontal_and_vertical" if c.horizontal_flip and c.vertical_flip else None
        mode = mode or ("horizontal" if c.horizontal_flip else "vertical")
        layers.append(keras.layers.RandomFlip(mode, seed=seeded()))
    if c.rotation:
        layers.append(keras.layers.RandomRotation(c.rotation / 360.0, seed=seeded(), **fill))
    if c.width_shift or c.height_shift:
        layers.append(
            keras.layers.RandomTranslation(c.height_shift, c.width_shift, seed=seeded(), **fill)
        )
    if c.shear:
        layers.append(keras.layers.RandomShear(x_factor=c.shear, seed=seeded(), **fill))
    if c.zoom:
        layers.append(keras.layers.RandomZoom(c.zoom, c.zoom, seed=seeded(), **fill))
    if not layers:
        layers.append(keras.layers.Identity())
    return keras.Sequential(layers, name=name)


def augment_preview(
    image_path: str | os.PathLike,
    n: int = 20,
    out_dir: str | os.PathLike = "preview",
    config: AugmentConfig | None = None,
    seed: int = 0,
    max_side: int | None = 512,
) -> list[Path]:
    """Write ``n`` augmented versions of one image as JPEGs, plus ``grid.jpg`` showing them all.

    This is the tutorial's ``datagen.flow(..., save_to_dir='preview')`` step: look at what the
    augmentation does to your own pictures before training on it (too much rotation or zoom
    can destroy what identifies a class). Files are named ``<stem>_<i>.jpg``; existing files
    in ``out_dir`` other than these are left alone.

    Args:
        image_path: the picture to augment.
        n: number of augmented samples.
        out_dir: folder to write into (created if needed).
        config: the augmentation; the tutorial's settings by default.
        seed: makes the samples reproducible.
        max_side: shrink the picture so its longer side is at most this many pixels before
            augmenting (a 12 MP photo would be slow and no more informative); None keeps it.

    Returns:
        Paths of the ``n`` samples followed by the grid.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    image = load_image(image_path)
    height, width = image.shape[:2]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        image = resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    augment = build_augmentation(config, seed=seed)
    batch = np.repeat(image[None], n, axis=0).astype("float32")
    samples = keras.ops.convert_to_numpy(augment(batch, training=True))
    samples = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    digits = len(str(n - 1))
    paths = []
    for i, sample in enumerate(samples):
        path = out / f"{stem}_{i:0{digits}d}.jpg"
        Image.fromarray(sample).save(path, quality=92)
        paths.append(path)
    grid = out / "grid.jpg"
    _grid([image, *samples]).save(grid, quality=90)
    return [*paths, grid]


def _grid(images: list[np.ndarray], tile: int = 192, gap: int = 4) -> Image.Image:
    """Tiles on a white sheet, nearly square; the first tile is the original picture."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * (tile + gap) + gap, rows * (tile + gap) + gap), "white")
    for k, a in enumerate(images):
        thumb = Image.fromarray(a)
        thumb.thumbnail((tile, tile), Image.Resampling.BILINEAR, reducing_gap=3.0)
        x = gap + (k % cols) * (tile + gap) + (tile - thumb.width) // 2
        y = gap + (k // cols) * (tile + gap) + (tile - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    return sheet
