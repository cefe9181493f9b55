"""Turn user inputs into validated ``(H, W, 3)`` uint8 RGB arrays.

classify, explain, features and training all load through here, so a bad file fails the
same way everywhere (an :class:`ImageError` naming the file, never a Pillow traceback) and
every pixel format reaches the model as 8-bit RGB, rescaled where Pillow would clip.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from kerascope.errors import KerascopeError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .bmp .dib .gif .tif .tiff .webp .avif .ppm .pgm .pbm"
    " .pnm .tga .ico .heic .heif".split()
)
"""Suffixes (lower case) picked up when walking folders. HEIC/HEIF are listed so that an
iPhone folder fails with an actionable reason instead of being silently skipped."""

MAX_PIXELS: int = 178_956_970
"""Largest width*height decoded (Pillow's own error threshold); ``KERASCOPE_MAX_PIXELS``
overrides it. A small compressed file can claim gigapixels and exhaust memory."""

_WHITE = 255
# Pillow's own bomb check runs inside Image.open, before we can read width and height.
# We switch it off just around the header parse (under a lock, so threads of ours never
# see each other's setting) and apply MAX_PIXELS ourselves with a message that says how
# to raise it; that also lets KERASCOPE_MAX_PIXELS go above Pillow's fixed threshold.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(KerascopeError):
    """An input that cannot be used, with the path and a reason a user can act on."""

    def __init__(self, path: str, reason: str, kind: str = "corrupt"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind  # corrupt | not_image | too_large | unsupported | unreadable
        super().__init__(f"cannot read '{self.path}': {reason}")

    def __reduce__(self):  # keep pickling (multiprocessing data loaders) working
        return (type(self), (self.path, self.reason, self.kind))


def max_pixels() -> int:
    """The pixel limit in force: ``KERASCOPE_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`.

    Read on every call so tests and long-running processes see changes to the variable.

    Raises:
        ValueError: the variable is set but is not a positive integer.
    """
    raw = os.environ.get("KERASCOPE_MAX_PIXELS", "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"KERASCOPE_MAX_PIXELS must be a positive integer, got {raw!r}")
    return value


def _fmt_pixels(n: int) -> str:
    return f"{n / 1e6:.{0 if n >= 1e7 else 1}f} MP" if n >= 1e6 else f"{n:,} pixels"


LINK_LOOP = "symbolic link loop (the link leads back to itself); fix or remove the link"
"""The reason every command gives for a path caught in a loop of symbolic links."""


def file_problem(path: str, kind: str) -> str | None:
    """Why ``path`` cannot be read as a file at all (decoders' own messages name neither the
    file nor the fix), or ``None``. ``kind`` completes "is a directory, not ...".
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return LINK_LOOP
        return f"cannot access file ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode):
        return f"is a directory, not {kind}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


DECODE_BUDGET: int = 200_000_000
"""Pixels decoded at once by all threads together. One image over it still decodes (alone):
full decodes peak at about 7 bytes per pixel (Pillow's 4-byte RGBX buffer, then the 3-byte
array), so eight 100 MP files decoded at once by the pool would need over 5 GB."""


class _PixelBudget:
    """A semaphore counted in pixels: large decodes wait for each other, small ones do not."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, pixels: int):
        pixels = min(pixels, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_DECODES = _PixelBudget(DECODE_BUDGET)


def load_image(
    path: str | os.PathLike, max_side: int | None = None, min_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode one file to an (H, W, 3) uint8 RGB array, or raise ImageError.

    ``max_side``: scale the result down (antialiased) so its longest side is at most this.
    ``min_size``: the (height, width) the caller will resize to; the decoder may then reduce
    the image while it stays at least twice that on both sides (JPEG ``draft``: DCT scaling,
    4-64x less memory and time; other formats: an integer box ``reduce`` before the copy to
    NumPy), so a 169 MP photo never becomes a full-size array when 224 px are wanted.
    Concurrent decodes share :data:`DECODE_BUDGET` pixels.

    The file is checked before Pillow sees it (missing, directory, FIFO, empty) because
    Pillow's errors for those are cryptic or, for a FIFO, a hang. The header is read
    first so oversized images are refused before any pixel memory is allocated, then
    the whole image is decoded eagerly: lazy decoding would let a truncated file fail
    later, far from its name. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left
    off so a half-downloaded photo is reported rather than silently padded with grey.

    Raises:
        ImageError: with ``reason`` saying what is wrong and, where possible, what to do.
    """
    p = os.fspath(path)
    problem = file_problem(p, "an image file")
    if problem:
        raise ImageError(p, problem, "unreadable")
    return decode_image(p, p, max_side, min_size)


LIMIT_HINT = "set KERASCOPE_MAX_PIXELS to raise it"


def decode_image(
    source: str | os.PathLike | IO[bytes],
    name: str,
    max_side: int | None = None,
    min_size: tuple[int, int] | None = None,
    limit_hint: str = LIMIT_HINT,
) -> np.ndarray:
    """`load_image` for a path already checked or an open binary file (an upload): the same
    header check, pixel limit, budget and reduced decode; errors name ``name``.

    ``ImageError.kind`` says what went wrong for callers that map it (HTTP statuses).
    """
    p = name
    try:
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        reason = "not an image file (unrecognised format)"
        if os.path.splitext(p)[1].lower() in {".heic", ".heif"}:
            reason += "; HEIC/HEIF needs `pip install pillow-heif`, or convert it to JPEG"
        raise ImageError(p, reason, "not_image") from None
    except PermissionError:
        raise ImageError(p, "permission denied", "unreadable") from None
    except Exception as err:  # plugins raise OSError, SyntaxError, struct.error, ...
        raise ImageError(p, f"truncated or corrupt image header ({err})") from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(p, f"image has zero size ({width}x{height})")
        limit = max_pixels()
        if width * height > limit:
            raise ImageError(
                p,
                f"image is {width}x{height} = {_fmt_pixels(width * height)}, over the "
                f"{_fmt_pixels(limit)} limit ({limit_hint})",
                "too_large",
            )
        if img.format == "JPEG":
            _check_jpeg_length(p, img)
        with _DECODES.take(width * height):
            return _decode(p, img, max_side, min_size)


# Start-of-frame markers of Huffman-coded JPEGs (baseline, extended, progressive; lossless is
# refused by Pillow). Arithmetic-coded ones (0xC9-0xCB, 0xCD-0xCF) can be smaller than any bound.
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2})


def _jpeg_frame(fp: IO[bytes]) -> tuple[int, list[tuple[int, int]]] | None:
    """The start-of-frame marker and each component's (h, v) sampling, read from the segment
    headers (Pillow keeps neither the marker nor whether the scans are Huffman coded)."""
    fp.seek(0)
    if fp.read(2) != b"\xff\xd8":
        return None
    for _ in range(10_000):  # segments before the frame; a damaged file gets no verdict here
        byte = fp.read(1)
        while byte and byte != b"\xff":  # junk between segments: Pillow skips it too
            byte = fp.read(1)
        byte = fp.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = fp.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
            continue
        head = fp.read(2)
        length = int.from_bytes(head, "big")
        if len(head) < 2 or length < 2 or marker == 0xDA:  # start of scan: no frame seen
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            body = fp.read(length - 2)
            count = body[5] if len(body) > 5 else 0
            sampling = [(b >> 4, b & 15) for b in body[7 : 6 + 3 * count : 3]]
            return marker, [(h, v) for h, v in sampling if h and v]
        fp.seek(length - 2, os.SEEK_CUR)
    return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_jpeg_length(p: str, img: Image.Image) -> None:
    """Refuse a JPEG whose file is too short for the size its header claims.

    A Huffman-coded JPEG spends at least one bit on every 8x8 block of every component (the DC
    coefficient), so its file cannot be shorter than blocks / 8 bytes. libjpeg pads a scan that
    ends early at an end marker with grey, and Pillow drops libjpeg's warning, so a 16x16 photo
    whose header says 12000x12000 would otherwise be "decoded" and classified.
    """
    fp = getattr(img, "fp", None)
    try:
        where = fp.tell()
        size = fp.seek(0, os.SEEK_END)
        frame = _jpeg_frame(fp)
        fp.seek(where)
    except (AttributeError, OSError, ValueError):  # not a seekable file: nothing to measure
        return
    if frame is None or frame[0] not in _HUFFMAN_SOF or not frame[1]:
        return
    width, height = img.size
    h_max, v_max = max(h for h, _ in frame[1]), max(v for _, v in frame[1])
    blocks = sum(
        _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
        for h, v in frame[1]
    )
    need = blocks // 8
    if size < need:
        raise ImageError(
            p,
            f"truncated image data: the header says {width}x{height}, which needs at least "
            f"{need:,} bytes of compressed data, but the file has {size:,}",
        )


def _decode(p: str, img: Image.Image, max_side: int | None, min_size) -> np.ndarray:
    """Pixels of an opened, size-checked image, reduced as early as the format allows."""
    width, height = img.size
    floor = 2 * max(min_size) if min_size else None
    if floor and img.format == "JPEG" and min(width, height) >= 2 * floor:
        img.draft(img.mode, (floor, floor))  # keeps both sides >= floor, by powers of two
    try:
        img.load()  # frame 0 of multi-frame GIF/TIFF: Image.open leaves it there
    except Image.DecompressionBombError as err:  # a GIF frame bigger than its canvas
        raise ImageError(p, f"image too large to decode safely ({err})", "too_large") from None
    except MemoryError:
        raise ImageError(p, f"not enough memory to decode {width}x{height}", "too_large") from None
    except Exception as err:
        raise ImageError(p, f"truncated or corrupt image data ({err})") from None
    try:
        rgb = to_rgb(_shrink(img, floor, max_side))
        return np.array(rgb, dtype=np.uint8)
    except ValueError as err:
        raise ImageError(p, f"unsupported pixel format: {err}", "unsupported") from None
    except MemoryError:  # Pillow raises it without a message, also for rows it cannot copy
        raise ImageError(p, _memory_reason(img), "too_large") from None
    except Exception as err:  # EXIF parsing or a conversion inside Pillow
        raise ImageError(p, f"corrupt image ({str(err) or type(err).__name__})") from None


def max_row_pixels(mode: str) -> int:
    """The widest row Pillow copies out of an image of ``mode`` on its way to an RGB array.

    Pillow's encoders keep a row's size in bits in a C ``int``: a row over ``INT_MAX / bits``
    raises a bare MemoryError whatever the free memory (a 178,000,000 x 1 PNG).
    """
    bits = 32 if mode in ("I", "F") or Image.getmodebands(mode) >= 4 else 24
    return (2**31 - 1) // bits - 7


def _memory_reason(img: Image.Image) -> str:
    width, height = img.size
    widest = max_row_pixels(img.mode)
    if width > widest:
        return (
            f"image rows are {width:,} pixels wide ({width}x{height}), more than the "
            f"{widest:,} Pillow can convert; crop or resize it first"
        )
    return f"not enough memory to convert {width}x{height} = {_fmt_pixels(width * height)}"


def _shrink(img: Image.Image, floor: int | None, max_side: int | None) -> Image.Image:
    """Reduce a decoded image before it is copied: by an integer box factor (keeping both sides
    >= ``floor``), or to fit ``max_side``. Modes Pillow cannot resample are left as they are."""
    width, height = img.size
    if img.mode not in ("RGB", "RGBA", "L", "LA", "RGBX", "CMYK"):
        return img
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if floor and min(width, height) >= 2 * floor:
        return img.reduce(min(width, height) // floor)
    return img


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
    if mode.startswith("I;16"):
        return _fromarray(_scale_uint16(np.asarray(image)))
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
    for files); uint8, uint16 (divided by 257), bool, other integers within 0..255, and
    floats in [0, 1] (multiplied by 255) or [0, 255]. A float array whose values all lie
    in [0, 1] is read as [0, 1]. Already-uint8 RGB input is returned without a copy.

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
        a = _scale_uint16(a)
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


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = (height, width) with antialiased bilinear filtering.

    Pillow's bilinear filter widens with the scale factor, so downscaling a 12 MP photo
    to 224 px averages every pixel instead of aliasing. ``reducing_gap=3.0`` first shrinks
    by an integer factor (box filter) while the image is over 3x the target; Pillow
    documents the result as indistinguishable from the full filter, and it is much faster.

    Returns:
        uint8 array of shape (size[0], size[1], 3).
    """
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive (height, width), got {size}")
    a = as_rgb_array(image)
    if a.shape[:2] == (height, width):
        return a.copy()
    pil = Image.fromarray(a, "RGB")
    out = pil.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def fit(image: np.ndarray, size: tuple[int, int], convention: Any = None) -> np.ndarray:
    """Fit a picture to a model's input ``size`` = (height, width) under the weights' convention.

    ``convention`` is a `kerascope.zoo.registry.InputConvention` (``None``: squash).
    ``squash`` is :func:`resize`: the whole picture, aspect ratio not kept (what kerascope's
    training does, and what heatmaps need to cover the whole picture). ``crop`` is how
    published ImageNet figures are measured: scale so the shorter side becomes
    ``size / crop_fraction`` (e.g. 256 for 224 at 0.875), then cut the centre. It is done in
    one resampling step, Pillow resizing just the source box that becomes the crop, antialiased
    like :func:`resize`; with the convention's ``interpolation`` (bilinear unless it says
    ``bicubic``, the filter the EfficientNet references evaluate with).

    Returns:
        uint8 array of shape (size[0], size[1], 3).
    """
    mode = getattr(convention, "resize", "squash")
    interpolation = getattr(convention, "interpolation", "bilinear")
    if mode not in ("squash", "crop"):
        raise ValueError(f"unknown resize mode {mode!r}; use 'squash' or 'crop'")
    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use {' or '.join(_FILTERS)}")
    if mode == "squash" and interpolation == "bilinear":
        return resize(image, size)
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive (height, width), got {size}")
    a = as_rgb_array(image)
    box = fit_box(a.shape[:2], size, convention)
    pil = Image.fromarray(a, "RGB")
    out = pil.resize((width, height), _FILTERS[interpolation], box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


def fit_box(
    shape: tuple[int, ...], size: tuple[int, int], convention: Any = None
) -> tuple[float, float, float, float]:
    """The part of a (height, width) picture that `fit` shows the model: (left, top, right,
    bottom) in its pixels; the whole picture unless the convention crops.

    A heatmap computed on the fitted input belongs to this box (`cam.overlay.place_in_picture`).
    """
    src_h, src_w = (int(s) for s in shape[:2])
    box = (0.0, 0.0, float(src_w), float(src_h))
    if getattr(convention, "resize", "squash") != "crop":
        return box
    fraction = float(getattr(convention, "crop_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {fraction}")
    height, width = (int(s) for s in size)
    scale = max(height / fraction / src_h, width / fraction / src_w)  # covers size / fraction
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2.0, (src_h - box_h) / 2.0  # its centre is kept
    return (max(0.0, left), max(0.0, top), min(src_w, left + box_w), min(src_h, top + box_h))


@dataclass
class InputList:
    """What :func:`expand_inputs` found, kept apart so the CLI can report skips and typos.

    Attributes:
        paths: files to try, in a stable order.
        skipped: non-image files (by suffix) met while walking folders or glob matches.
        missing: inputs that are neither an existing file or folder nor a matching glob.
        ordered: ``(name, missing)`` for every path and missing input, in input order (folders
            and globs in their expansion order), so results can keep the user's order.
    """

    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ordered: list[tuple[str, bool]] = field(default_factory=list)


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> InputList:
    """Files as given, folders recursively, globs (including ``**``) expanded.

    A file named explicitly is kept whatever its suffix: the user asked for it, so it is
    tried and fails with a reason rather than vanishing. Inside folders and glob matches
    only :data:`IMAGE_SUFFIXES` and symbolic link loops (whatever their names; they fail with
    :data:`LINK_LOOP`) are kept (others go to ``skipped``) and hidden entries
    (``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are ignored. Folders are walked in
    sorted order, inputs keep their order, and a file reached twice is listed once.
    """
    result = InputList()
    seen: set[tuple[str, bool]] = set()

    def add(path: str, to: list[str]) -> None:
        key = (os.path.normcase(os.path.abspath(path)), to is result.paths)
        if key not in seen:
            seen.add(key)
            to.append(path)
            if to is result.paths:
                result.ordered.append((path, False))

    def add_found(path: str) -> None:
        image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
        # a link loop has no kind to judge by its name: it is tried, and says it is a loop
        add(path, result.paths if image or _is_link_loop(path) else result.skipped)

    def walk(folder: str) -> None:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    add_found(os.path.join(dirpath, name))

    for item in inputs:
        raw = os.fspath(item)
        path = os.path.expanduser(raw) if raw.startswith("~") else raw
        if path and os.path.isdir(path):
            walk(path)
        elif path and (os.path.exists(path) or os.path.islink(path)):
            add(path, result.paths)  # a broken link or a loop is tried, and says which
        elif (
            path
            and any(c in path for c in "*?[")
            and (matches := sorted(glob.glob(path, recursive=True)))
        ):
            for match in matches:
                if os.path.isdir(match):
                    walk(match)
                elif os.path.isfile(match) or os.path.islink(match):
                    add_found(match)
        elif raw not in result.missing:
            result.missing.append(raw)
            result.ordered.append((raw, True))
    return result
