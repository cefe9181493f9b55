"""Uploaded bytes -> the same (H, W, 3) uint8 RGB array `kerascope.images.load_image` gives.

An upload is never a path: the server decodes the bytes it received, so no request can make it
read a file of its own. The checks are those of ``load_image`` in the same order (header first,
the pixel limit of ``KERASCOPE_MAX_PIXELS`` before any pixel is allocated, then an eager decode
and ``to_rgb``), so a photo sent to the server is classified exactly as `kerascope.classify`
classifies the file. Each failure carries the HTTP status a client should get.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from kerascope.errors import KerascopeError
from kerascope.images import _PIL_LIMIT_LOCK, _fmt_pixels, max_pixels, to_rgb

BAD_REQUEST, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE = 400, 413, 415, 422


class DecodeError(KerascopeError, ValueError):
    """An upload that is not a usable picture: ``reason`` for people, ``status`` for HTTP."""

    def __init__(self, reason: str, status: int = UNPROCESSABLE):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode one uploaded image to (H, W, 3) uint8 RGB, or raise `DecodeError`.

    Raises:
        DecodeError: empty (400), not an image (415), over the pixel limit (413), truncated or
            corrupt (422).
    """
    if not data:
        raise DecodeError("empty upload (0 bytes)", BAD_REQUEST)
    try:
        with _PIL_LIMIT_LOCK:  # Pillow's own bomb check off for the header parse only
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise DecodeError("not an image file (unrecognised format)", UNSUPPORTED) from None
    except Exception as err:  # plugins raise OSError, SyntaxError, struct.error, ...
        raise DecodeError(f"truncated or corrupt image header ({err})") from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError(f"image has zero size ({width}x{height})")
        limit = max_pixels()
        if width * height > limit:
            raise DecodeError(
                f"image is {width}x{height} = {_fmt_pixels(width * height)}, over the "
                f"{_fmt_pixels(limit)} limit of this server",
                TOO_LARGE,
            )
        try:
            img.load()
        except Image.DecompressionBombError as err:
            raise DecodeError(f"image too large to decode safely ({err})", TOO_LARGE) from None
        except MemoryError:
            raise DecodeError(f"not enough memory to decode {width}x{height}", TOO_LARGE) from None
        except Exception as err:
            raise DecodeError(f"truncated or corrupt image data ({err})") from None
        try:
            return np.array(to_rgb(img), dtype=np.uint8)
        except ValueError as err:
            raise DecodeError(f"unsupported pixel format: {err}", UNSUPPORTED) from None
        except Exception as err:
            raise DecodeError(f"corrupt image ({err})") from None
