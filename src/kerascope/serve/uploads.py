"""What a request carries: its images as bytes, then as pixels, decoded off the event loop.

Images come as ``multipart/form-data`` (any field name, one or more files) or as the raw
request body (any image content type). They are held in memory only up to the body limit
(`kerascope.serve.limits`) and decoded on a thread pool (Pillow releases the GIL), so a big
photo never stalls the requests around it. Before any of them is decoded, `weigh` weighs
the request from the headers alone (the server's pixel budget: a 22 KB PNG can claim 179 MP).

Decoding is reduced as ``classify`` reduces a file: to at least twice the model input for
classify; for explain, to at least the long side of the pictures drawn (``max_side``), and only
``max_side=0`` (full size) decodes and draws every pixel.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from concurrent import futures
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from kerascope.output import clean, printable
from kerascope.serve.decode import (
    DecodeError,
    decode_bytes,
    decode_costs,
    decode_work,
    read_header,
)
from kerascope.serve.render import drawn_size
from kerascope.serve.served import RequestError
from kerascope.zoo.registry import InputConvention

MAX_FILES = 64
RAW_NAME = "<body>"


@dataclass
class Upload:
    """One image of a request: its name for the results, and its pixels or why there are none."""

    name: str
    original: np.ndarray | None = None  # full resolution, kept for explain
    pixels: np.ndarray | None = None  # at the model's input size
    error: str | None = None
    status: int = 200  # the 4xx this failure maps to when nothing in the request worked


async def read_uploads(request: Request) -> list[tuple[str, bytes]]:
    """The images of a request as (name, bytes), in the order sent; a 400 when there are none."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        try:
            files = [(key, v) for key, v in form.multi_items() if isinstance(v, UploadFile)]
            found = [(f.filename or key, await f.read()) for key, f in files]
        finally:
            await form.close()
        if not found:
            raise RequestError("no file in the multipart form: send the image(s) as files")
        return found
    body = await request.body()
    if not body:
        raise RequestError("no image in the request: send it as the body or as multipart files")
    return [(RAW_NAME, body)]


def decode_floor(size: tuple[int, int], keep: bool, max_side: int | None) -> tuple[int, int] | None:
    """The ``min_size`` a decode may reduce to: the model input (classify), or for a kept
    picture (explain) one whose short side stays >= ``max_side`` and >= 2x the input; ``None``
    (full size) for ``max_side`` 0."""
    if not keep:
        return size
    if not max_side:
        return None
    side = max(math.ceil(max_side / 2), *size)
    return side, side


def _prepare(
    name: str,
    data: bytes,
    size: tuple[int, int],
    keep: bool,
    convention,
    max_side: int | None,
    again: bool | None = None,
    scans: int | None = None,
) -> Upload:
    """``again``: the model's input needs a decode of its own (`Weighed.again`; None: read
    the header to know). ``scans``: the JPEG's scans as weighed (`Weighed.scans`), counted
    once for all its decodes."""
    from kerascope.images import fit

    floor = decode_floor(size, keep, max_side)
    if again is None and keep:
        header = read_header(data)
        again = _decoded_twice(decode_costs(data, (floor, size), header)) if header else False
        scans = header.jpeg_scans if header else None
    try:  # as classify decodes a file
        image = source = decode_bytes(data, floor, scans)
        if again:
            # A large JPEG's picture is decoded less reduced than classify decodes it; the model
            # sees classify's decode, so the class's probability is the one classify gives
            # (77.0 % against 77.7 % for a 2400x1800 photo before).
            source = decode_bytes(data, size, scans)
    except DecodeError as exc:
        # the name as people read it: a U+202E in it reversed the rest of the message on the page
        shown = printable(clean(name))
        return Upload(name, error=f"cannot read '{shown}': {exc.reason}", status=exc.status)
    return Upload(name, image if keep else None, fit(source, size, convention))


def _decoded_twice(costs: list[tuple[int, int, int]]) -> bool:
    """Whether the picture's decode and the model's (`decode_costs` of both) differ in size."""
    (pixels, *picture), (_, *model) = costs
    return bool(pixels) and picture != model


@dataclass(frozen=True)
class Weighed:
    """A request weighed from its headers: the pixels it will hold at once, the work of its
    decoding and drawing (`kerascope.serve.decode.decode_work`: which lane it takes), and for
    each upload whether the model's input is decoded apart from the picture and its JPEG
    scans (`Header.jpeg_scans`; `decode_all` takes both: the headers are read, and the scans
    of a 12 MP photo counted (~3.5 ms), once per request)."""

    pixels: int
    again: tuple[bool, ...]
    work: int = 0
    scans: tuple[int | None, ...] = ()


def weigh(
    uploads: list[tuple[str, bytes]],
    size: tuple[int, int],
    keep: bool = False,
    max_side: int | None = None,
) -> Weighed:
    """Pixels a request will hold at once: each image as decoded (headers only are read),
    plus, for explain (``keep``), the pictures drawn at ``max_side`` (0: full size) and the
    model's own decode where it differs from the picture's; and the work of it all."""
    floor = decode_floor(size, keep, max_side)
    total, work, again, scans = 0, 0, [], []
    for _, data in uploads:
        header = read_header(data)
        scans.append(header.jpeg_scans if header else None)
        sizes = (floor, size) if keep else (floor,)
        costs = decode_costs(data, sizes, header) if header else [(0, 0, 0)] * len(sizes)
        pixels, width, height = costs[0]
        total += pixels
        work += decode_work(header, pixels)
        twice = keep and _decoded_twice(costs)
        if keep and pixels:  # the pictures as drawn: scaled down, a tiny one enlarged
            drawn = math.prod(drawn_size(width, height, max_side or 0))
            total += drawn
            work += drawn
            if twice:  # decoded again for the model (`_prepare`)
                total += costs[1][0]
                work += decode_work(header, costs[1][0])
        again.append(twice)
    return Weighed(total, tuple(again), work, tuple(scans))


def pixel_cost(
    uploads: list[tuple[str, bytes]],
    size: tuple[int, int],
    keep: bool = False,
    max_side: int | None = None,
) -> int:
    """`weigh`'s pixels alone."""
    return weigh(uploads, size, keep, max_side).pixels


async def decode_all(
    uploads: list[tuple[str, bytes]],
    size: tuple[int, int],
    pool: Executor,
    keep: bool = False,
    convention: InputConvention | None = None,
    max_side: int | None = None,
    weighed: Weighed | None = None,
) -> list[Upload]:
    """Decode and fit every upload to ``size`` on ``pool``; failures come back in place.

    ``convention``: the classifier's (``Classifier.convention``) for classification, as
    ``classify`` fits files; ``None`` (squash) keeps the whole picture, for explain.
    ``keep``: keep the decoded picture too (explain), reduced while its short side stays at
    least ``max_side`` (0 or None: full size). ``weighed``: `weigh`'s answer for the same
    arguments, so no header is read again.
    """
    again = weighed.again if weighed is not None else (None,) * len(uploads)
    scans = weighed.scans if weighed is not None and weighed.scans else (None,) * len(uploads)
    jobs = [
        pool.submit(_prepare, n, d, size, keep, convention, max_side, a, c)
        for (n, d), a, c in zip(uploads, again, scans, strict=True)
    ]
    try:
        return list(await asyncio.gather(*map(asyncio.wrap_future, jobs)))
    except asyncio.CancelledError:
        # A client gone: decodes not started are dropped, and those running keep this
        # request's slot and pixels until they end (a thread cannot be stopped): freed at
        # once, the next heavy request waited behind them in the pool, past its queue timeout.
        for job in jobs:
            job.cancel()
        running = [job for job in jobs if not job.done()]
        if running:
            await asyncio.get_running_loop().run_in_executor(None, futures.wait, running)
        raise


def failure(items: list[Upload]) -> tuple[int, str | None]:
    """(200, None) when any image worked; else the status of the failure (413 wins: it says
    "resize") and the message of the first image that failed so, so the two agree (a text
    file's "not an image file" came with an empty file's 400, not its own 415)."""
    if any(it.error is None for it in items):
        return 200, None
    statuses = {it.status for it in items}
    status = 413 if 413 in statuses else min(statuses)
    return status, next(it.error for it in items if it.status == status)


def data_url(image: np.ndarray | Image.Image, fmt: str) -> str:
    """``data:image/...;base64,...``: drops straight into an <img src> or a file after a split."""
    return f"data:image/{fmt};base64," + base64.b64encode(encode(image, fmt)).decode("ascii")


def encode(image: np.ndarray | Image.Image, fmt: str) -> bytes:
    """PNG (fast compression: these are throwaway views) or JPEG quality 90."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = io.BytesIO()
    if fmt == "png":
        pil.save(out, "PNG", compress_level=1)
    else:
        pil.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()
