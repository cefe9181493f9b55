"""JPEG pixels through simplejpeg (libjpeg-turbo) when it is installed: the same pixels as
Pillow's decode, without holding Python's GIL.

Pillow releases the GIL while libjpeg decodes, but copying the decoded picture into NumPy
(``Image.tobytes``) holds it: about 0.5 ms of a 2.2 ms decode-and-fit of a 500x375 photo, so
a 16-core decode pool stalls near 1,000-2,000 photos/s whatever the cores. simplejpeg decodes
straight into a NumPy array with the GIL released (``benchmarks/decode.py`` measures both).

Only what both decoders do alike takes this path: a baseline or progressive Huffman JPEG in
RGB or grayscale, without EXIF rotation, decoded with the DCT scaling Pillow's ``draft`` would
pick. Everything else, and any file libjpeg-turbo so much as warns about, goes to Pillow,
whose result or error is the reference. ``KERASCOPE_JPEG_DECODER=pillow`` turns it off.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re

import numpy as np
from PIL import ExifTags, Image

from kerascope.errors import KerascopeError

DECODER_ENV = "KERASCOPE_JPEG_DECODER"
_CHOICES = ("auto", "simplejpeg", "pillow")
_SAME_AS_PILLOW = frozenset({"RGB", "L"})  # CMYK/YCCK, MPO frames and the rest stay on Pillow


class DecoderSettingError(KerascopeError, RuntimeError):
    """``KERASCOPE_JPEG_DECODER`` names no decoder this installation has: one line from the
    command, not a per-file error for every photo."""


try:
    import simplejpeg
except ImportError:  # an optional extra: `pip install simplejpeg`
    simplejpeg = None


def jpeg_decoder() -> str:
    """The JPEG decoder in force: ``simplejpeg`` or ``pillow``.

    ``KERASCOPE_JPEG_DECODER`` (auto|simplejpeg|pillow; read on every call) chooses; auto is
    simplejpeg when it is installed.

    Raises:
        DecoderSettingError: an unknown value, or simplejpeg asked for but not installed.
    """
    wanted = os.environ.get(DECODER_ENV, "auto").strip().lower() or "auto"
    if wanted not in _CHOICES:
        raise DecoderSettingError(f"{DECODER_ENV}={wanted!r} is not one of {', '.join(_CHOICES)}")
    if wanted == "simplejpeg" and simplejpeg is None:
        raise DecoderSettingError(
            f"{DECODER_ENV}=simplejpeg, but simplejpeg is not installed "
            "(pip install simplejpeg, or unset the variable to decode with Pillow)"
        )
    if wanted == "pillow" or simplejpeg is None:
        return "pillow"
    return "simplejpeg"


def draft_scale(size: tuple[int, int], floor: int | None) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's ``draft(mode, (floor, floor))`` picks for a
    (width, height) JPEG: the largest that keeps both sides at least ``floor``."""
    if not floor:
        return 1
    most = min(size[0] // floor, size[1] // floor)
    return next((s for s in (8, 4, 2) if most >= s), 1)


def _most_bytes(width: int, height: int) -> int:
    """The largest file read whole for a JPEG of this size: 4 bytes per pixel (more than any
    quality spends) and 2 MB of metadata. A file claiming a small picture but holding a
    gigabyte is decoded by Pillow, which reads only the picture."""
    return 4 * width * height + (2 << 20)


def decode(img: Image.Image, scale: int) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB pixels of an opened, size-checked JPEG, reduced ``scale`` times in
    the DCT as Pillow's ``draft`` would; None where Pillow must decode it (see the module)."""
    if img.format != "JPEG" or jpeg_decoder() != "simplejpeg":
        return None
    if img.mode not in _SAME_AS_PILLOW or len(getattr(img, "tile", ())) != 1:
        return None
    if img.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        return None
    fp = getattr(img, "fp", None)
    width, height = img.size
    try:
        if fp.seek(0, os.SEEK_END) > _most_bytes(width, height):
            return None  # junk after the picture: Pillow reads only what it decodes
        fp.seek(0)
        data = fp.read()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=-(-width // scale),
            min_height=-(-height // scale),
            strict=True,
        )
    except Exception:  # noqa: BLE001 - a libjpeg-turbo warning or error: Pillow decides
        return None


MAX_SCANS = 100
"""Most scans (SOS markers) a JPEG may have. Real encoders write 1 (baseline, interleaved), 3
(baseline, one per component) or about 10 (progressive: libjpeg's default script has 10, 6
for greyscale; mozjpeg's optimised scripts stay under 64); libjpeg-turbo's tools refuse over
500 (``-maxscans``). Every progressive scan walks every block of the picture again, whatever
the DCT reduction, so a 476 KB file with one scan repeated 3,000 times took ~100 s to decode
at 8000x8000; at 100 scans that file costs about what an ordinary photo of its size does."""

MAX_SEGMENTS = 4096
"""Most marker segments counted: a real JPEG has tens (tables, APPn, one SOS and its tables per
scan; restart markers are not segments). 5 million 4-byte COM segments in a 20 MB upload made
the count take 7 s where Pillow skips them in 0.05 s: past this the file is refused as a bomb."""

# A marker: 0xFF then anything but a stuffed zero, a restart marker (no length, part of the
# scan), or another 0xFF (fill bytes before a marker).
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_NO_LENGTH = frozenset({0x01, 0xD8})  # TEM, SOI


def count_scans(data, most: int = MAX_SCANS) -> int:
    """Scans (SOS segments) of the JPEG ``data`` (bytes, memoryview or mmap), counted from its
    markers without decoding: segment lengths are followed (so a thumbnail inside EXIF does not
    count), entropy-coded data is searched for the next marker. Stops at EOI, at the end of
    the data, or once ``most`` + 1 scans are seen (enough to refuse the file)."""
    pos, end, scans, segments = 2, len(data), 0, 0
    while pos < end and scans <= most:
        found = _MARKER.search(data, pos)
        if found is None:
            break
        segments += 1
        if segments > MAX_SEGMENTS:  # a flood of tiny segments: each costs this loop a step
            return most + 1
        marker, pos = data[found.start() + 1], found.end()
        if marker == 0xD9:  # EOI: libjpeg stops here, whatever follows
            break
        if marker in _NO_LENGTH:
            continue
        if pos + 2 > end:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker == 0xDA:
            scans += 1  # then its header, then entropy-coded data up to the next marker
        pos += max(2, length)
    return scans


def scan_bomb(fp, most: int = MAX_SCANS) -> int | None:
    """The scan count of the JPEG in the open binary file ``fp`` when it is over ``most``
    (None when it is not, or cannot be read: the decode says why). The file is mapped, not
    read, where it has a descriptor; ``fp``'s position is kept."""
    try:
        where = fp.tell()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        getbuffer = getattr(fp, "getbuffer", None)
        if getbuffer is not None:  # an upload in memory
            with getbuffer() as view:
                scans = count_scans(view, most)
        else:
            try:
                mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
            except (AttributeError, OSError, ValueError):  # a pipe, or no descriptor
                fp.seek(0)
                scans = count_scans(fp.read(), most)
            else:
                with mapped:
                    scans = count_scans(mapped, most)
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError, ValueError):
            fp.seek(where)
    return scans if scans > most else None
