"""Augmentation policies: RandAugment (Cubuk et al. 2020) and TrivialAugment (Müller & Hutter
2021), with torchvision's operations and magnitude ranges, in kerascope's one-definition form.

:func:`sample_policy` draws, from ``(seed, epoch, batch)``, each image's operations and their
magnitudes: RandAugment takes ``num_ops`` (2) operations at a fixed magnitude (9 of 31 bins),
each signed at random; TrivialAugment one operation at a magnitude drawn uniformly from the
bins (torchvision's "wide" ranges). The draw has its own random stream, so the seed
augmentation's matrices are the same with or without a policy.

Two kinds of operation, two places:

* geometric ones (rotate, shear, translate) are affine maps, composed into the image's
  :func:`kerascope.data.augment.sample_matrices` matrix, so the existing executors (Pillow on
  the host, :func:`kerascope.data.augment.warp` on the device) resample once for both;
* colour ones (autocontrast, equalize, solarize, posterize, brightness, colour, contrast,
  sharpness) are PIL's: :func:`apply_colour` computes them in ``keras.ops``, traced into the
  whole-graph train step on the device; :func:`kerascope.data.affine.colour_host` applies
  PIL's own to the uint8 batch on the host, image by image (within one grey level of each
  other, tested).

Geometric operations run before colour ones (the papers apply them in the drawn order; a
rotation and a contrast change commute except at the filled border), and moved-in pixels are
filled by the config's ``fill_mode`` (torchvision fills black).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascope.errors import ConfigError

POLICIES = ("randaugment", "trivialaugment")
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast",
       "equalize")  # fmt: skip
GEOMETRIC = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate"})
SIGNED = GEOMETRIC | {"brightness", "color", "contrast", "sharpness"}
BINS = 31  # torchvision's num_magnitude_bins
POLICY_STREAM = 0x706F6C  # draws of their own: the seed augmentation's matrices stay the same


def _ranges(policy: str, height: int, width: int) -> dict[str, np.ndarray]:
    """Magnitude per bin of each operation (torchvision's ``_augmentation_space``)."""
    wide = policy == "trivialaugment"
    b = np.arange(BINS)
    lin = np.linspace  # noqa: N806
    enhance = lin(0.0, 0.99 if wide else 0.9, BINS)
    return {
        "identity": np.zeros(BINS),
        "shear_x": lin(0.0, 0.99 if wide else 0.3, BINS),
        "shear_y": lin(0.0, 0.99 if wide else 0.3, BINS),
        "translate_x": lin(0.0, 32.0 if wide else 150.0 / 331.0 * width, BINS),
        "translate_y": lin(0.0, 32.0 if wide else 150.0 / 331.0 * height, BINS),
        "rotate": lin(0.0, 135.0 if wide else 30.0, BINS),
        "brightness": enhance, "color": enhance, "contrast": enhance, "sharpness": enhance,
        "posterize": 8 - np.round(b / ((BINS - 1) / (6 if wide else 4))),
        "solarize": lin(255.0, 0.0, BINS),
        "autocontrast": np.zeros(BINS),
        "equalize": np.zeros(BINS),
    }  # fmt: skip


def check_policy(policy: str | None) -> str | None:
    """The canonical policy name (None: none), or one line naming the accepted ones."""
    if policy is None or str(policy).strip().lower() in ("", "none"):
        return None
    key = str(policy).strip().lower().replace("-", "").replace("_", "")
    if key not in POLICIES:
        raise ConfigError(f"unknown augment policy {policy!r}; use {', '.join(POLICIES)} "
                          "(or none)")  # fmt: skip
    return key


@dataclass
class PolicyPlan:
    """One batch's policy: ``names`` (N, k) operation names and ``values`` (N, k) their signed
    magnitudes; ``matrices`` (N, 2, 3) the geometric ones composed (output pixel -> input
    pixel, as ``sample_matrices``); ``colour`` (N, k, 2) float32 ``(op index, value)`` of
    the colour ones (index 0, identity, elsewhere) for :func:`apply_colour`."""

    names: list[list[str]]
    values: np.ndarray
    matrices: np.ndarray
    colour: np.ndarray


def sample_policy(policy: str, seed: int, epoch: int, batch: int, n: int, height: int,
                  width: int, num_ops: int = 2, magnitude: int = 9) -> PolicyPlan:  # fmt: skip
    """The policy's draw for one batch (see the module doc).

    Example:
        >>> plan = sample_policy("randaugment", 0, 0, 0, n=3, height=32, width=32)
        >>> plan.matrices.shape, plan.colour.shape
        ((3, 2, 3), (3, 2, 2))
    """
    policy = check_policy(policy) or "randaugment"
    rng = np.random.default_rng([int(seed), int(epoch), int(batch), POLICY_STREAM])
    ranges = _ranges(policy, height, width)
    k = 1 if policy == "trivialaugment" else int(num_ops)
    names: list[list[str]] = []
    values = np.zeros((n, k), np.float32)
    colour = np.zeros((n, k, 2), np.float32)
    matrices = np.tile(np.eye(3, dtype=np.float64), (n, 1, 1))
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    for i in range(n):
        row = []
        for j in range(k):
            name = OPS[rng.integers(len(OPS))]
            level = rng.integers(BINS) if policy == "trivialaugment" else int(magnitude)
            value = float(ranges[name][min(level, BINS - 1)])
            if name in SIGNED and rng.random() < 0.5:
                value = -value
            if name in ("brightness", "color", "contrast", "sharpness"):
                value = 1.0 + value  # the enhance factor
            row.append(name)
            values[i, j] = value
            if name in GEOMETRIC:
                matrices[i] = matrices[i] @ _affine(name, value, centre)
            else:
                colour[i, j] = (COLOUR_OPS.index(name) if name in COLOUR_OPS else 0, value)
        names.append(row)
    return PolicyPlan(names, values, matrices[:, :2].astype(np.float32), colour)


def _affine(name: str, value: float, centre: np.ndarray) -> np.ndarray:
    """3x3 map output pixel -> input pixel of one geometric operation, about the centre."""
    m = np.eye(3)
    if name == "rotate":  # counter-clockwise by value degrees, as PIL's rotate
        a = math.radians(value)
        m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    elif name == "shear_x":
        m[0, 1] = value
    elif name == "shear_y":
        m[1, 0] = value
    elif name == "translate_x":
        m[0, 2] = -value
    elif name == "translate_y":
        m[1, 2] = -value
    if name in ("rotate", "shear_x", "shear_y"):
        m[:2, 2] = centre - m[:2, :2] @ centre
    return m


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(N, 2, 3) maps: output pixel -> ``inner`` -> ``outer`` -> input pixel (the policy's
    geometric operations applied to the picture the seed augmentation made)."""
    full = np.tile(np.eye(3, dtype=np.float64), (len(outer), 1, 1))
    a, b = full.copy(), full.copy()
    a[:, :2], b[:, :2] = outer, inner
    return (a @ b)[:, :2].astype(np.float32)


COLOUR_OPS = ("identity", "brightness", "color", "contrast", "sharpness", "posterize",
              "solarize", "autocontrast", "equalize")  # fmt: skip


def apply_colour(images: Any, colour: Any) -> Any:
    """The colour operations of a plan: float ``images`` (N, H, W, 3) in 0..255 and
    ``colour`` (N, k, 2) ``(op index, value)`` from :func:`sample_policy`, applied in order.
    ``keras.ops`` throughout: traced into the train step, or eager on a host batch.

    Each operation is PIL's (``ImageEnhance`` blends, ``ImageOps`` maps), on the image rounded
    to whole grey levels as PIL would see it."""
    import keras

    ops = keras.ops
    x = ops.clip(ops.round(ops.cast(images, "float32")), 0, 255)
    colour = ops.cast(colour, "float32")
    for j in range(int(colour.shape[1])):
        which, value = colour[:, j, 0], colour[:, j, 1][:, None, None, None]
        out = x
        for index, name in enumerate(COLOUR_OPS[1:], 1):
            chosen = ops.equal(which, index)[:, None, None, None]
            out = ops.where(chosen, _COLOUR[name](x, value), out)  # where: no NaN leaks
        x = ops.clip(ops.round(out), 0, 255)
    return x


def _grey(x: Any) -> Any:
    """PIL's ``convert("L")``: ITU-R 601-2 luma, rounded."""
    import keras

    return keras.ops.round(x[..., :1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114)


def _blend(degenerate: Any, x: Any, factor: Any) -> Any:
    import keras

    return keras.ops.clip(degenerate + factor * (x - degenerate), 0, 255)


def _contrast(x: Any, v: Any) -> Any:
    import keras

    mean = keras.ops.round(keras.ops.mean(_grey(x), axis=(1, 2, 3), keepdims=True))
    return _blend(mean, x, v)


def _sharpness(x: Any, v: Any) -> Any:
    """PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1, over 13) inside, the border unchanged."""
    import keras

    ops = keras.ops
    padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = int(x.shape[1]), int(x.shape[2])
    total = 4 * x
    for dy in range(3):
        for dx in range(3):
            total = total + padded[:, dy:dy + h, dx:dx + w]  # fmt: skip
    smooth = ops.round(total / 13.0)
    ys = ops.arange(h)[:, None]
    xs = ops.arange(w)[None, :]
    inner = ops.logical_and(ops.logical_and(ys > 0, ys < h - 1),
                            ops.logical_and(xs > 0, xs < w - 1))[None, :, :, None]  # fmt: skip
    return _blend(ops.where(inner, smooth, x), x, v)


def _posterize(x: Any, bits: Any) -> Any:
    import keras

    step = keras.ops.power(2.0, 8.0 - keras.ops.clip(bits, 1.0, 8.0))
    return keras.ops.floor(x / step) * step


def _autocontrast(x: Any, v: Any) -> Any:
    import keras

    ops = keras.ops
    lo = ops.min(x, axis=(1, 2), keepdims=True)
    hi = ops.max(x, axis=(1, 2), keepdims=True)
    scale = 255.0 / ops.maximum(hi - lo, 1.0)
    return ops.where(hi > lo, ops.clip((x - lo) * scale, 0, 255), x)


def _equalize(x: Any, v: Any) -> Any:
    """PIL's ``ImageOps.equalize`` per channel: a lookup table from the cumulative histogram,
    ``step = (pixels - count of the brightest level) // 255``; no change when step is 0."""
    import keras

    ops = keras.ops
    n, h, w, c = (int(s) if s is not None else -1 for s in x.shape)
    flat = ops.reshape(ops.transpose(ops.cast(x, "int32"), (0, 3, 1, 2)), (-1, h * w))
    rows = int(flat.shape[0]) if flat.shape[0] is not None else n * c
    ids = ops.reshape(flat + 256 * ops.arange(rows, dtype="int32")[:, None], (-1,))
    ones = ops.ones_like(ids, dtype="float32")  # a histogram per row, traceable (no bincount)
    hist = ops.reshape(ops.segment_sum(ones, ids, num_segments=rows * 256), (rows, 256))
    top = ops.max(flat, axis=1, keepdims=True)
    at_top = ops.take_along_axis(hist, top, axis=1)
    step = ops.floor((h * w - at_top) / 255.0)
    before = ops.cumsum(hist, axis=1) - hist
    safe = ops.maximum(step, 1.0)
    lut = ops.minimum(ops.floor((ops.floor(step / 2) + before) / safe), 255.0)
    lut = ops.where(step > 0, lut, ops.arange(256, dtype="float32")[None, :])
    mapped = ops.take_along_axis(lut, flat, axis=1)
    return ops.transpose(ops.reshape(mapped, (-1, c, h, w)), (0, 2, 3, 1))


_COLOUR = {
    "brightness": lambda x, v: _blend(0.0 * x, x, v),
    "color": lambda x, v: _blend(_grey(x), x, v),
    "contrast": _contrast,
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": lambda x, v: _solarize(x, v),
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}


def _solarize(x: Any, threshold: Any) -> Any:
    import keras

    return keras.ops.where(x >= threshold, 255.0 - x, x)


def describe(names: list[str], values: np.ndarray) -> str:
    """One preview label line: ``rotate +12°, contrast 1.33``."""
    parts = []
    for name, value in zip(names, values, strict=True):
        if name in ("identity", "autocontrast", "equalize"):
            parts.append(name)
        elif name == "rotate":
            parts.append(f"rotate {value:+.0f}°")
        elif name.startswith("translate"):
            parts.append(f"{name} {value:+.0f}px")
        elif name == "posterize":
            parts.append(f"posterize {value:.0f} bits")
        elif name == "solarize":
            parts.append(f"solarize >={value:.0f}")
        else:
            parts.append(f"{name} {value:+.2f}" if name.startswith("shear") else
                         f"{name} {value:.2f}")  # fmt: skip
    return ", ".join(parts)
