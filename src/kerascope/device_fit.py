"""Fitting pictures to a model's input inside the compiled forward (crop box and resize as
one ``jax.image.scale_and_translate``): on a GPU the host then only decodes, and the batch
crosses to the device as uint8 at the pictures' own size. `kerascope.inference` uses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kerascope.images import fit_box


@dataclass(frozen=True)
class DeviceFit:
    """How pictures of one size are fitted to a model's input inside the compiled forward:
    the crop box of `kerascope.images.fit_box` as a scale and shift per axis, and the filter."""

    size: tuple[int, int]  # (height, width) of the model's input
    scale: tuple[float, float]
    shift: tuple[float, float]
    method: str  # "cubic" or "linear" (jax.image)


def device_fit(shape: tuple[int, ...], size: tuple[int, int], convention: Any = None) -> DeviceFit:
    """The :class:`DeviceFit` of pictures of ``shape`` (H, W, ...) under ``convention``: the
    same box and filter as `kerascope.images.fit`, antialiased like Pillow when shrinking, the
    result rounded to whole grey levels as a uint8 picture holds them. Measured against
    Pillow's ``fit`` on the four real photos: at most 5 grey levels apart, 0.1-0.2 on average
    (rounding at the borders of the filter); Pillow's shrink-by-box step for pictures over 3x
    the input (``reducing_gap``) is not mimicked."""
    left, top, right, bottom = fit_box(shape, size, convention)
    height, width = (int(v) for v in size)
    sy, sx = height / (bottom - top), width / (right - left)
    bicubic = getattr(convention, "interpolation", "bilinear") == "bicubic"
    return DeviceFit((height, width), (sy, sx), (-top * sy, -left * sx),
                     "cubic" if bicubic else "linear")  # fmt: skip


def fit_on_device(x: Any, fit: DeviceFit) -> Any:
    """A (N, H, W, C) uint8 batch fitted under ``fit``, as float32 whole grey levels."""
    import jax
    import jax.numpy as jnp

    shape = (x.shape[0], *fit.size, x.shape[3])
    out = jax.image.scale_and_translate(
        x.astype(jnp.float32), shape, (1, 2), jnp.asarray(fit.scale, jnp.float32),
        jnp.asarray(fit.shift, jnp.float32), method=fit.method, antialias=True,
    )  # fmt: skip
    return jnp.clip(jnp.round(out), 0.0, 255.0)
