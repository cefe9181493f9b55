"""Every pixel format as 8-bit RGB: modes, bit depths, alpha over white, EXIF rotation.

The one rule (`to_rgb` for Pillow images, `as_rgb_array` for arrays) by which grayscale, RGBA,
CMYK, 16-bit and float pictures reach the model, rescaled where Pillow would clip.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from PIL import ExifTags, Image, ImageOps

_WHITE = 255
_log = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as an upright 8-bit RGB image.

    EXIF orientation is applied first: phone photos are stored sideways with a tag, and
    a model shown the sideways pixels sees a different picture from the user. Anything
    with transparency is composited on white rather than having alpha dropped, because
    fully transparent pixels often hold arbitrary RGB (black, or leftovers of an edit)
    that would otherwise appear. 16-bit and float data are rescaled, not clipped.

    Raises:
        ValueError: a mode with no sensible RGB meaning.
    """
    fmt = image.format  # a file's depth is known; a transposed copy has no format
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("RGBa", "La"):  # premultiplied: over white is colour + (255 - alpha)
        a = np.asarray(image)
        rgb = a[..., :-1].astype(np.int32) + (_WHITE - a[..., -1:].astype(np.int32))
        return _fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _fromarray(_composite_on_white(np.asarray(image.convert("RGBA"))))
    if mode.startswith("I;16"):  # from a file: 16-bit; in memory, as a uint16 array is read
        a = np.asarray(image)
        return _fromarray(_scale_uint16(a) if fmt else uint16_pixels(a))
    if mode == "I":
        return _fromarray(_scale_int32(np.asarray(image), image.format))
    if mode == "F":
        return _fromarray(_scale_float(np.asarray(image)))
    # 1, L, P, CMYK (Adobe-inverted JPEGs are undone by the JPEG plugin), YCbCr, LAB, HSV,
    # RGBX: Pillow's own conversions are exact for these.
    try:
        return image.convert("RGB")
    except ValueError:
        raise ValueError(f"mode {mode!r} cannot be converted to RGB") from None


def _fromarray(a: np.ndarray) -> Image.Image:
    if a.ndim == 2 or a.shape[-1] == 1:
        a = np.repeat(a.reshape(a.shape[:2] + (1,)), 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), "RGB")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight alpha -> (H, W, 3) uint8 over white, rounded."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    out = (rgb * alpha + _WHITE * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _scale_uint16(a: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly, so the full 16-bit range maps onto the full 8-bit one.
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


_said_8bit = threading.Event()  # the 8-bit reading of uint16 is explained once per process


def uint16_pixels(a: np.ndarray) -> np.ndarray:
    """uint16 pixels as uint8: 16-bit values (0..65535) divided by 257, except in an array with
    no value over 255. That holds 8-bit values (``np.array(img, dtype=np.uint16)``), which
    divided by 257 became a black picture, silently classified and explained: they are taken
    as they are, with a warning (once per process) saying how to have them read as 16-bit. A
    16-bit picture that dark is under 0.4 % of full scale: black either way, unless asked."""
    hi = int(a.max()) if a.size else 0
    if hi > 255 or hi == 0:
        return _scale_uint16(a)
    if not _said_8bit.is_set():
        _said_8bit.set()
        _log.warning(
            "a uint16 image array has no value over %d: read as 8-bit values (0..255), not as "
            "16-bit (0..65535), which would be black; if it is a 16-bit picture that dark, "
            "pass it as floats in [0, 1] (x / 65535)",
            hi,
        )
    return a.astype(np.uint8)


def _scale_int32(a: np.ndarray, fmt: str | None) -> np.ndarray:
    """Mode ``I`` does not say its bit depth: 16-bit PGM and old 16-bit PNG decode to it,
    but so do 8-bit values that went through ``convert("I")``."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 65535 and (hi > 255 or fmt in ("PNG", "PPM")):
        return _scale_uint16(a)
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    return _scale_float(a.astype(np.float64))


def _scale_float(a: np.ndarray) -> np.ndarray:
    """Float pixels from files (scientific TIFFs) have no fixed range: [0, 1] and [0, 255]
    are taken at face value, anything else is stretched min..max; NaN/inf become 0."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def as_rgb_array(x: np.ndarray) -> np.ndarray:
    """Validate an array passed through the Python API and return it as (H, W, 3) uint8.

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) (alpha composited on white, as
    for files); uint8, uint16 (divided by 257; with no value over 255, read as 8-bit with a
    warning: `uint16_pixels`), bool, other integers within 0..255, and floats in [0, 1]
    (multiplied by 255) or [0, 255]. A float array whose values all lie in [0, 1] is read as
    [0, 1]. Already-uint8 RGB input is returned without a copy.

    Raises:
        ValueError: shape or values that cannot be an image; the message says which.
    """
    a = np.asarray(x)
    shape = tuple(a.shape)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        raise ValueError(
            f"image array has shape {shape}, which looks channels-first; "
            "expected (H, W, 3): transpose it with x.transpose(1, 2, 0)"
        )
    if a.ndim == 4:
        raise ValueError(f"image array has shape {shape}, a batch; pass one (H, W, 3) image")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"image array has shape {shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image array has shape {shape}, which has no pixels")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = uint16_pixels(a)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{a.dtype} image values range {lo}..{hi}; expected 0..255 (or use uint16)"
            )
        a = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("float image array contains NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 255.0:
            raise ValueError(
                f"float image values range {lo:g}..{hi:g}; expected [0, 1] or [0, 255] "
                "(undo any model preprocessing such as [-1, 1] scaling first)"
            )
        a = np.rint(a.astype(np.float64) * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
    else:
        raise ValueError(f"image array has dtype {a.dtype}; expected an integer or float type")
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 4:
        a = _composite_on_white(a)
    elif a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)
