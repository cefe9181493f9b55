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

from dataclasses import dataclass

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.policy import PolicyPlan, check_policy, compose, sample_policy  # noqa: E402
from kerascope.errors import ConfigError  # noqa: E402

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
        policy: ``randaugment`` or ``trivialaugment`` (:mod:`kerascope.data.policy`) on top
            of the transformations above, or None.
        policy_ops, policy_magnitude: RandAugment's N (operations per image) and M (of 31
            bins); TrivialAugment draws one operation at a random magnitude.
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
    policy: str | None = None
    policy_ops: int = 2
    policy_magnitude: int = 9

    def __post_init__(self) -> None:
        """Refuse values the random layers would misread; ConfigError (a ValueError) names
        the setting, so the CLI prints one line."""
        if self.fill_mode not in FILL_MODES:
            raise ConfigError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        self.policy = check_policy(self.policy)
        if not 1 <= int(self.policy_ops) <= 4:
            raise ConfigError(f"policy_ops must be 1 to 4, got {self.policy_ops}")
        if not 0 <= int(self.policy_magnitude) <= 30:
            raise ConfigError(f"policy_magnitude is a bin, 0 to 30, got {self.policy_magnitude}")
        for name in ("rotation", "width_shift", "height_shift", "shear", "zoom"):
            if not getattr(self, name) >= 0:  # NaN too (it reached the random draws)
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
                    or self.zoom or self.horizontal_flip or self.vertical_flip
                    or self.policy)  # fmt: skip


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
    if c.policy:  # the policy's geometric operations, on the picture made above
        out = compose(out, policy_plan(c, seed, epoch, batch, n, height, width).matrices)
    return out.astype(np.float32)


def policy_plan(config: AugmentConfig, seed: int, epoch: int, batch: int, n: int, height: int,
                width: int) -> PolicyPlan:  # fmt: skip
    """The config's policy draw for one batch (its colour operations go to the executors)."""
    return sample_policy(config.policy or "randaugment", seed, epoch, batch, n, height, width,
                         config.policy_ops, config.policy_magnitude)  # fmt: skip


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
