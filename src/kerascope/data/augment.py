"""The seed's data augmentation: one definition, two executors.

The cats-vs-dogs tutorials augment with ``ImageDataGenerator(rotation_range=40,
width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True, fill_mode='nearest')``. Here those settings are :class:`AugmentConfig`,
and what they mean is one function, :func:`sample_matrices`: from ``(seed, epoch, batch)`` it
draws each image's flip, rotation, shift, shear and zoom and composes them into one 2x3 affine
matrix (output pixel index -> input pixel index, flips folded in). Two executors resample with
those matrices, bilinearly, with the fill mode of the config:

* on the host, :func:`kerascope.data.affine.warp_pillow` (Pillow's C resampler, for the split
  trainer on a CPU, where XLA's resampling is slower than the whole network);
* on the device, :func:`warp` (``keras.ops`` gathers), traced into the jitted train step of
  the whole-graph trainer (``kerascope.training.whole``), so the uint8 batch is augmented,
  cast, and trained on in one compiled call.

Both read the same matrices, so the same seed gives the same pictures on either (a test
holds them within a few grey levels on a real photo, for every fill mode). A resumed run draws
the views an unbroken run would have. Saved models carry no augmentation: it is part of
training, not of the network.
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
            applied by the augmentation: kerascope models take 0..255 pixels and
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

    @property
    def is_identity(self) -> bool:
        """Whether nothing is ever transformed (every range zero, no flips)."""
        return not (self.rotation or self.width_shift or self.height_shift or self.shear
                    or self.zoom or self.horizontal_flip or self.vertical_flip)  # fmt: skip


def sample_matrices(
    config: AugmentConfig, seed: int, epoch: int, batch: int, n: int, height: int, width: int
) -> np.ndarray:
    """The augmentation of one batch: ``(n, 2, 3)`` float32 affine maps, drawn from
    ``(seed, epoch, batch)``. This is the one definition both executors apply.

    Row ``i`` maps an output pixel index ``(x, y, 1)`` to the input position it reads:
    about the image centre, zoom (x and y apart) . shear . rotation, then the shift, then the
    flips (a horizontal flip reads column ``width - 1 - x``). Draws are uniform in the
    config's ranges (rotation in degrees either way, shifts as fractions of the size, shear
    as ``tan``, zoom in ``1 +- zoom``), flips with probability 1/2.

    Example:
        >>> sample_matrices(AugmentConfig(), 0, 0, 0, n=2, height=8, width=8).shape
        (2, 2, 3)
    """
    c = config
    rng = np.random.default_rng([int(seed), int(epoch), int(batch)])
    flip_x = rng.random(n) < 0.5 if c.horizontal_flip else np.zeros(n, bool)
    flip_y = rng.random(n) < 0.5 if c.vertical_flip else np.zeros(n, bool)
    angle = np.radians(rng.uniform(-c.rotation, c.rotation, n))
    shift = rng.uniform(-1, 1, (n, 2)) * [c.width_shift * width, c.height_shift * height]
    shear = rng.uniform(-c.shear, c.shear, n)
    zoom = rng.uniform(1 - c.zoom, 1 + c.zoom, (n, 2))  # (x, y)
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.tile(np.eye(2), (n, 1, 1))
    shearing[:, 0, 1] = shear
    linear = zoom[:, :, None] * (shearing @ rotate)  # diag(zoom) . shear . rotate
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    offset = centre - linear @ centre - shift
    out = np.concatenate([linear, offset[:, :, None]], axis=2)
    for axis, flip, size in ((0, flip_x, width), (1, flip_y, height)):
        out[flip, axis] = -out[flip, axis]
        out[flip, axis, 2] += size - 1
    return out.astype(np.float32)


def identity_matrices(n: int) -> np.ndarray:
    """``(n, 2, 3)`` maps that read every pixel where it is: no augmentation."""
    return np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))


def _fold(index, size: int, mode: str):
    """Input indices mapped into ``0..size-1`` by the fill mode; with ``constant`` also
    whether each index was inside (outside reads 0)."""
    ops = keras.ops
    if mode == "nearest":
        return ops.clip(index, 0, size - 1), None
    if mode == "wrap":
        return ops.mod(index, size), None
    if mode == "reflect":  # d c b a | a b c d | d c b a (numpy's "symmetric")
        m = ops.mod(index, 2 * size)
        return ops.where(m >= size, 2 * size - 1 - m, m), None
    inside = ops.logical_and(index >= 0, index < size)
    return ops.clip(index, 0, size - 1), inside


def warp(images, matrices, fill_mode: str = "nearest", dtype: str = "float32"):
    """The device executor: ``images`` (N, H, W, C, any dtype) resampled bilinearly at
    ``matrices`` (N, 2, 3, from :func:`sample_matrices`), as ``dtype``.

    Written with ``keras.ops`` (an index map per fill mode and four gathers), so it traces into
    a jitted train step on any backend: no Python per image, no separate dispatch.
    """
    if fill_mode not in FILL_MODES:
        raise ConfigError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    ops = keras.ops
    n = ops.shape(images)[0]
    height, width, channels = (int(v) for v in images.shape[1:])
    m = ops.cast(matrices, "float32")
    ys = ops.arange(height, dtype="float32")[None, :, None]
    xs = ops.arange(width, dtype="float32")[None, None, :]

    def row(r: int):
        return (m[:, r, 0][:, None, None] * xs + m[:, r, 1][:, None, None] * ys
                + m[:, r, 2][:, None, None])  # fmt: skip

    sx, sy = row(0), row(1)
    x0, y0 = ops.floor(sx), ops.floor(sy)
    wx, wy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    flat = ops.reshape(images, (-1, channels))
    base = (ops.arange(n, dtype="int32") * (height * width))[:, None, None]

    def tap(y, x):
        yi, y_in = _fold(y, height, fill_mode)
        xi, x_in = _fold(x, width, fill_mode)
        value = ops.cast(ops.take(flat, base + yi * width + xi, axis=0), "float32")
        if y_in is not None:
            value = value * ops.cast(ops.logical_and(y_in, x_in), "float32")[..., None]
        return value

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return ops.cast(top * (1 - wy) + bottom * wy, dtype)


def build_augmentation(
    config: AugmentConfig | None = None, seed: int | None = None, name: str = "augmentation"
) -> keras.Sequential:
    """The same settings as ``keras.layers.Random*`` layers, for a user's own Keras model.

    kerascope's training does not use these (they ran eagerly, outside the compiled step, at
    ~180 img/s on a GPU, and drew from their own generators): it augments with
    :func:`sample_matrices` and :func:`warp`. Kept for code that wants the layers inside a
    model; Keras 3.15 cannot reload a saved ``RandomShear``, so leave them out of saved models.
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

    Drawn by :func:`sample_matrices` (as training draws them) and resampled by Pillow.
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
    from kerascope.data.affine import warp_pillow

    c = config or AugmentConfig()
    matrices = sample_matrices(c, seed, 0, 0, n, *image.shape[:2])
    samples = warp_pillow(np.repeat(image[None], n, axis=0), matrices, c.fill_mode)
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
    h, w = image.shape[:2]
    labels = ["original"] + [
        f"{i:0{digits}d}: {_describe(_transform_of(m, c, h, w))}" for i, m in enumerate(matrices)
    ]
    _grid([image, *samples], labels).save(grid, quality=90)
    return [*paths, grid]


def _transform_of(matrix: np.ndarray, config: AugmentConfig, height: int, width: int) -> dict:
    """The flips, rotation, shift, shear and zoom one `sample_matrices` map was drawn with,
    read back from the 2x3 matrix (for the preview's labels): the inverse of its composition.

    A vertical flip with a rotation of r is the same map as a horizontal flip with r + 180;
    with ``vertical_flip`` on, the reading whose rotation is within the config's range wins.
    """
    m = np.asarray(matrix, np.float64).copy()
    linear, offset = m[:, :2], m[:, 2]
    angle = math.atan2(linear[1, 0], linear[1, 1])  # row 1 is zoom_y * (sin, cos)
    flip_y = False
    if config.vertical_flip and abs(math.degrees(angle)) > config.rotation + 1e-6:
        flip_y, angle = True, math.atan2(-linear[1, 0], -linear[1, 1])
    cos, sin = math.cos(angle), math.sin(angle)
    along = float(linear[0] @ [cos, -sin])  # zoom_x, negated by a horizontal flip
    flip_x = along < 0
    for axis, flipped, size in ((0, flip_x, width), (1, flip_y, height)):
        if flipped:
            linear[axis], offset[axis] = -linear[axis], size - 1 - offset[axis]
    zoom_x, zoom_y = float(linear[0] @ [cos, -sin]), float(np.hypot(*linear[1]))
    shear = float(linear[0] @ [sin, cos]) / zoom_x
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    shift = centre - linear @ centre - offset  # in pixels: input read from further along
    return {"flip_x": flip_x, "flip_y": flip_y, "rotation": math.degrees(angle),
            "shift": (float(shift[0]) / width, float(shift[1]) / height), "shear": shear,
            "zoom": (zoom_x, zoom_y)}  # fmt: skip


def _describe(t: dict) -> str:
    """One preview label: what `_transform_of` found, in the config's units."""
    flips = "+".join(n for n, on in (("flip", t["flip_x"]), ("vflip", t["flip_y"])) if on)
    first = f"rot {t['rotation']:+.0f}°" + (f" {flips}" if flips else "")
    second = (f"shift {t['shift'][0]:+.0%} {t['shift'][1]:+.0%} "
              f"zoom {t['zoom'][0]:.2f}/{t['zoom'][1]:.2f}")  # fmt: skip
    return f"{first} shear {t['shear']:+.2f}\n{second}"


def _grid(images: list[np.ndarray], labels: list[str] | None = None, tile: int = 192,
          gap: int = 4) -> Image.Image:  # fmt: skip
    """Tiles on a white sheet, nearly square, each with its label underneath; the first tile
    is the original picture. Cells take the pictures' shape (all are the same size), so a
    landscape photo does not leave a square's worth of white around it."""
    from PIL import ImageDraw, ImageFont

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    height, width = images[0].shape[:2]
    scale = tile / max(height, width)
    cell_w, cell_h = max(1, round(width * scale)), max(1, round(height * scale))
    font = ImageFont.load_default(size=11)
    lines = max((label.count("\n") + 1 for label in labels or []), default=0)
    text_h = lines * 13 + (3 if lines else 0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max((measure.multiline_textbbox((0, 0), t, font=font)[2] for t in labels or []),
                 default=0)  # fmt: skip
    cell_w = max(cell_w, widest)  # a portrait picture's label stays under its own tile
    step_x, step_y = cell_w + gap, cell_h + text_h + gap
    sheet = Image.new("RGB", (cols * step_x + gap, rows * step_y + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for k, a in enumerate(images):
        thumb = Image.fromarray(a)
        thumb.thumbnail((cell_w, cell_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        x = gap + (k % cols) * step_x + (cell_w - thumb.width) // 2
        y = gap + (k // cols) * step_y + (cell_h - thumb.height) // 2
        sheet.paste(thumb, (x, y))
        if labels:
            top = gap + (k // cols) * step_y + cell_h + 2
            draw.multiline_text((gap + (k % cols) * step_x, top), labels[k], fill="black",
                                font=font, spacing=2)  # fmt: skip
    return sheet
