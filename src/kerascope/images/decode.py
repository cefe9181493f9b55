"""Decode one file safely: checked before Pillow sees it, refused above the pixel limit,
reduced while decoding when a small size is wanted, and never a Pillow traceback
(`ImageError` names the file and what to do)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from kerascope.errors import KerascopeError
from kerascope.images import jpeg
from kerascope.images.colour import to_rgb

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .bmp .dib .gif .tif .tiff .webp .avif .ppm .pgm .pbm"
    " .pnm .tga .ico .heic .heif".split()
)
"""Suffixes (lower case) picked up when walking folders. HEIC/HEIF are listed so that an
iPhone folder fails with an actionable reason instead of being silently skipped."""


MAX_PIXELS: int = 178_956_970
"""Largest width*height decoded (Pillow's own error threshold); ``KERASCOPE_MAX_PIXELS``
overrides it. A small compressed file can claim gigapixels and exhaust memory."""


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
        try:  # 1e9, 2.5e8: a whole number written in exponent form
            number = float(raw)
            value = int(number) if number.is_integer() else 0
        except (ValueError, OverflowError):
            value = 0
    if value <= 0:
        raise ValueError(f"KERASCOPE_MAX_PIXELS must be a positive integer, got {raw!r}")
    return value


def _fmt_pixels(n: int) -> str:
    return f"{n / 1e6:.{0 if n >= 1e7 else 1}f} MP" if n >= 1e6 else f"{n:,} pixels"


LINK_LOOP = "symbolic link loop (the link leads back to itself); fix or remove the link"
"""The reason every command gives for a path caught in a loop of symbolic links."""


VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".wmv", ".flv",
                            ".mpg", ".mpeg", ".ts", ".3gp"})  # fmt: skip


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
        try:  # a folder met while walking one, which could not be listed
            os.scandir(path).close()
        except OSError as err:
            why = "permission denied" if isinstance(err, PermissionError) else err.strerror
            return f"folder cannot be read ({why or err}): its images are left out"
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

    ``max_side``: scale the result down (antialiased) so its longest side is at most this; a
    JPEG at least twice as long is decoded reduced in the DCT to no less than it (`side_scale`).
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
    return load_image_whole(path, max_side, min_size)[0]


def load_image_whole(
    path: str | os.PathLike, max_side: int | None = None, min_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, bool]:
    """`load_image`, and whether the array is the whole picture at its full size (neither
    reduced for ``min_size`` nor scaled to ``max_side``; its sides those of the file's header):
    a caller that also needs the full picture keeps this decode instead of reading the file
    again."""
    p = os.fspath(path)
    problem = file_problem(p, "an image file")
    if problem:
        raise ImageError(p, problem, "unreadable")
    return _open_and_decode(p, p, max_side, min_size, LIMIT_HINT)


LIMIT_HINT = "set KERASCOPE_MAX_PIXELS to raise it"


def decode_image(
    source: str | os.PathLike | IO[bytes],
    name: str,
    max_side: int | None = None,
    min_size: tuple[int, int] | None = None,
    limit_hint: str = LIMIT_HINT,
    scans: int | None = None,
) -> np.ndarray:
    """`load_image` for a path already checked or an open binary file (an upload): the same
    header check, pixel limit, budget and reduced decode; errors name ``name``.

    ``scans``: a JPEG's scan count when the caller has counted it in these same bytes
    (`jpeg.count_scans`, as the server does to weigh an upload), so it is not counted again.
    ``ImageError.kind`` says what went wrong for callers that map it (HTTP statuses).
    """
    return _open_and_decode(source, name, max_side, min_size, limit_hint, scans)[0]


def _open_and_decode(
    source, name: str, max_side, min_size, limit_hint, scans: int | None = None
) -> tuple[np.ndarray, bool]:
    """`decode_image`, and whether the pixels are the whole picture (`load_image_whole`)."""
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
        suffix = os.path.splitext(p)[1].lower()
        if suffix in {".heic", ".heif"}:
            reason += "; HEIC/HEIF needs `pip install pillow-heif`, or convert it to JPEG"
        elif suffix in VIDEO_SUFFIXES:
            reason += "; a video: `kerascope video FILE` explains it frame by frame"
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
        if img.format in ("JPEG", "MPO"):  # MPO: a JPEG with a multi-picture index (phones)
            _check_jpeg_length(p, img)
            _check_jpeg_scans(p, img, scans)
        with _DECODES.take(width * height):
            pixels = _decode(p, img, max_side, min_size)
        # any reduction or scaling shrinks a side; an EXIF turn swaps them
        return pixels, sorted(pixels.shape[:2]) == sorted((width, height))


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


def _check_jpeg_scans(p: str, img: Image.Image, scans: int | None = None) -> None:
    """Refuse a JPEG with far more scans than any encoder writes (`jpeg.MAX_SCANS`), from its
    markers (``scans``: already counted), before a pixel is decoded: each scan decodes every
    block again (a scan bomb)."""
    if scans is None:
        bomb = jpeg.scan_bomb(getattr(img, "fp", None)) is not None
    else:
        bomb = scans > jpeg.MAX_SCANS
    if bomb:
        raise ImageError(
            p,
            f"progressive JPEG with over {jpeg.MAX_SCANS} scans (encoders write about 10): "
            "its decode could take minutes; save it again as an ordinary JPEG",
        )


def _decode(p: str, img: Image.Image, max_side: int | None, min_size) -> np.ndarray:
    """Pixels of an opened, size-checked image, reduced as early as the format allows."""
    width, height = img.size
    floor = 2 * max(min_size) if min_size else None
    draft = floor if floor and min(width, height) >= 2 * floor else None
    scale = jpeg.draft_scale(img.size, draft) if floor else side_scale(img.size, max_side)
    pixels = jpeg.decode(img, scale)
    if pixels is not None:  # simplejpeg: Pillow's pixels without holding the GIL
        return _shrink_array(pixels, floor, max_side, img.size, scale)
    scale = scale if img.format == "JPEG" else 1  # other formats decode whole
    if scale > 1:
        # Pillow picks the largest power of two keeping both sides >= these: ``scale``
        img.draft(img.mode, (width // scale, height // scale))
    try:
        img.load()  # frame 0 of multi-frame GIF/TIFF: Image.open leaves it there
    except Image.DecompressionBombError as err:  # a GIF frame bigger than its canvas
        raise ImageError(p, f"image too large to decode safely ({err})", "too_large") from None
    except MemoryError:
        raise ImageError(p, f"not enough memory to decode {width}x{height}", "too_large") from None
    except Exception as err:
        raise ImageError(p, f"truncated or corrupt image data ({err})") from None
    try:
        rgb = to_rgb(_shrink(img, floor, max_side, (width, height), scale))
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


def side_scale(size: tuple[int, int], max_side: int | None) -> int:
    """The DCT scale (1, 2, 4 or 8) at which a (width, height) JPEG to be scaled to ``max_side``
    can be decoded: the largest keeping its long side over ``max_side`` (a decode of exactly
    ``max_side`` would skip the resize that trims its padded last row) and its short side a
    pixel, so a 12000x3000 panorama drawn at 4096 px is decoded at 6000x1500, not in full."""
    if not max_side:
        return 1
    return next((s for s in (8, 4, 2) if max(size) // s > max_side and min(size) >= s), 1)


def _shrink_array(
    pixels: np.ndarray, floor: int | None, max_side: int | None, full: tuple[int, int], scale: int
) -> np.ndarray:
    """`_shrink` for pixels decoded straight to NumPy."""
    height, width = pixels.shape[:2]
    if (max_side and max(width, height) > max_side) or (floor and min(width, height) >= 2 * floor):
        shrunk = _shrink(Image.fromarray(pixels, "RGB"), floor, max_side, full, scale)
        return np.array(shrunk, dtype=np.uint8)
    return pixels


def _shrink(
    img: Image.Image, floor: int | None, max_side: int | None, full: tuple[int, int], scale: int
) -> Image.Image:
    """Reduce a decoded image before it is copied: by an integer box factor (keeping both sides
    >= ``floor``), or to fit ``max_side``: to the size the ``full`` (width, height) picture
    scales to, from the part of a decode reduced ``scale`` times that holds the picture (its
    last row and column are padding: 1805 px at 1/4 is 451.25 of 452; without the box, 3 levels
    off on average). Modes Pillow cannot resample are left as they are."""
    width, height = img.size
    if img.mode not in ("RGB", "RGBA", "L", "LA", "RGBX", "CMYK"):
        return img
    if max_side and max(width, height) > max_side:
        drafted = scale > 1 and (width, height) == tuple(-(-side // scale) for side in full)
        box = (0, 0, full[0] / scale, full[1] / scale) if drafted else None
        ratio = max_side / max(full)
        size = (max(1, round(full[0] * ratio)), max(1, round(full[1] * ratio)))
        return img.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    if floor and min(width, height) >= 2 * floor:
        return img.reduce(min(width, height) // floor)
    return img
