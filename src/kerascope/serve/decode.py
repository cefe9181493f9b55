"""Uploaded bytes -> the same (H, W, 3) uint8 RGB array `kerascope.images.load_image` gives.

An upload is never a path: the server decodes the bytes it received, so no request can make it
read a file of its own. The decoding is `kerascope.images.decode_image`, the one ``load_image``
uses (header first, the pixel limit of ``KERASCOPE_MAX_PIXELS`` before any pixel is allocated,
the shared decode budget, the same reduced decode when only the model input is needed), so a
photo sent to the server is classified exactly as `kerascope.classify` classifies the file.
Each failure carries the HTTP status a client should get.

`decode_cost` reads only the header to say how many pixels that decode will hold, so a request
is weighed against the server's pixel budget before any pixel is allocated; `decode_costs` says
it for several decodes of one upload (explain's picture and model input) from one read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kerascope.errors import KerascopeError
from kerascope.images import _PIL_LIMIT_LOCK, ImageError, decode_image, max_pixels
from kerascope.images.jpeg import MAX_SCANS, count_scans, draft_scale

BAD_REQUEST, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE = 400, 413, 415, 422

_STATUS = {"not_image": UNSUPPORTED, "unsupported": UNSUPPORTED, "too_large": TOO_LARGE}


class DecodeError(KerascopeError, ValueError):
    """An upload that is not a usable picture: ``reason`` for people, ``status`` for HTTP."""

    def __init__(self, reason: str, status: int = UNPROCESSABLE):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def decode_bytes(
    data: bytes, min_size: tuple[int, int] | None = None, scans: int | None = None
) -> np.ndarray:
    """Decode one uploaded image to (H, W, 3) uint8 RGB, or raise `DecodeError`.

    ``min_size``: the model input it will be resized to, as for ``load_image`` (None keeps the
    full resolution, for an overlay). ``scans``: `Header.jpeg_scans` when the header was read
    to weigh the upload (its JPEG scans are then not counted a second time).

    Raises:
        DecodeError: empty (400), not an image (415), over the pixel limit (413), truncated or
            corrupt (422).
    """
    if not data:
        raise DecodeError("empty upload (0 bytes)", BAD_REQUEST)
    try:
        return decode_image(io.BytesIO(data), "upload", min_size=min_size, scans=scans,
                            limit_hint="set by this server: send a smaller image")  # fmt: skip
    except ImageError as exc:
        raise DecodeError(exc.reason, _STATUS.get(exc.kind, UNPROCESSABLE)) from None


def decode_cost(data: bytes, min_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(pixels the decode of ``data`` will hold, width, height as decoded) from the header.

    The rule is `kerascope.images`'s: a JPEG at least twice the floor (2 x the largest side of
    ``min_size``) is decoded reduced (``draft``); every other format is decoded whole before it
    is reduced. Unreadable headers, and images over the pixel limit, cost 0: their decode fails
    before it allocates anything (and says why, for that image alone).
    """
    return decode_costs(data, [min_size])[0]


@dataclass(frozen=True)
class Header:
    """What an upload's header says, for weighing it before it is decoded."""

    width: int
    height: int
    jpeg: bool
    bytes_per_pixel: int  # as the decoder reads it: 16-bit and alpha channels hold more
    scans: int  # JPEG scans (1 for every other format): each one decodes every block again
    size: int  # bytes of the file

    @property
    def jpeg_scans(self) -> int | None:
        """The scans counted for the decode's scan-bomb check (`decode_bytes`); None when it
        is not a JPEG."""
        return self.scans if self.jpeg else None


def read_header(data: bytes) -> Header | None:
    """The `Header` of ``data``; None when it is unreadable or over the pixel limit (its decode
    fails before it allocates anything, and says why, for that image alone)."""
    try:
        with _PIL_LIMIT_LOCK:  # our limit, not Pillow's (as decode_image opens it)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with img:
            (width, height), jpeg = img.size, img.format in ("JPEG", "MPO")
            bands = len(img.getbands())
            raw = " ".join(str(t[3]) for t in getattr(img, "tile", ()) or ())
            mode = img.mode
    except Exception:  # noqa: BLE001  (any unreadable header: the decode says why)
        return None
    if width * height > max_pixels():
        return None
    depth = 4 if mode in ("I", "F") else 2 if "16" in raw or "16" in mode else 1
    scans = min(count_scans(data), MAX_SCANS + 1) if jpeg else 1
    return Header(width, height, jpeg, bands * depth, scans, len(data))


def decode_work(header: Header | None, pixels: int) -> int:
    """The work of decoding ``header``'s image to ``pixels`` pixels, in pixel-equivalents (an
    8-bit RGB pixel decoded is 1): more bytes per pixel cost more, and a JPEG reduced while it
    decodes still reads all its compressed bytes and walks every block once per scan."""
    if header is None:
        return 0
    work = pixels * max(3, header.bytes_per_pixel) / 3
    if header.jpeg:
        work += header.size + header.width * header.height * header.scans / 64
    return math.ceil(work)


def decode_costs(
    data: bytes, sizes: Sequence[tuple[int, int] | None], header: Header | None = None
) -> list[tuple[int, int, int]]:
    """`decode_cost` for each of ``sizes``, from one read of the header (``header``: already
    read): explain decodes a picture and, for a large JPEG, the model's input apart."""
    header = header or read_header(data)
    if header is None:
        return [(0, 0, 0)] * len(sizes)
    width, height, jpeg = header.width, header.height, header.jpeg
    costs = []
    for min_size in sizes:
        floor = 2 * max(min_size) if min_size else None
        reduced = jpeg and floor and min(width, height) >= 2 * floor
        s = draft_scale((width, height), floor) if reduced else 1  # as Pillow's draft
        w, h = -(-width // s), -(-height // s)
        costs.append((w * h, w, h))
    return costs
