"""The one way images reach a model: sources in, decoded and fitted uint8 batches out.

:func:`normalise_inputs` turns paths, folders, globs, RGB arrays and PIL Images into sources in
input order (a missing path stays at its place as a :class:`Missing`), and :func:`iter_batches`
/ :func:`iter_pixel_batches` decode them on a thread pool as large as the machine's cores,
``PREFETCH + 1`` batches ahead of the consumer, into batches in that same order, missing and
unreadable inputs as errors in place. classify, explain, evaluate, predict and features all go
through them; video frames, which are not files, have their own pipeline (``kerascope.video``).
Batches are padded to a :func:`bucket` so a compiled model sees few shapes
(`kerascope.inference`).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kerascope.batch_sizes import checked_batch_size
from kerascope.errors import KerascopeError
from kerascope.images import (
    ImageError,
    as_rgb_array,
    fit,
    fit_box,
    load_image,
    load_image_whole,
    to_rgb,
)
from kerascope.images.inputs import expand_inputs, loop_note

_log = logging.getLogger(__name__)

ENV_VAR = "KERASCOPE_ENGINE"
_ATTR = "_kerascope_forwards"  # per-model cache, on the model: freed with it (no global leak)

Batch = np.ndarray | Sequence[np.ndarray]
Output = np.ndarray | list[np.ndarray]


WORKERS_VAR = "KERASCOPE_DECODE_WORKERS"


PREFETCH = 2  # while the consumer holds batch i, batches i + 1 to i + 1 + PREFETCH decode
KEPT_BYTES = 1 << 30
"""Largest memory the full-size pictures kept with their model inputs may take at once (see
`kept_pixels`): beyond it, a picture is decoded again where it is drawn."""


def kept_pixels(batch_size: int, in_flight: int = 0) -> int:
    """The largest picture (in pixels) `decode_item` may keep as ``Item.original`` in
    `iter_batches` of ``batch_size``, so that every kept picture alive at once stays within
    :data:`KEPT_BYTES`: the batch being consumed, the one on the device behind it (explain
    dispatches batch i + 1 before it gives out batch i), the ``PREFETCH + 1`` submitted behind
    that (`_ahead`), and ``in_flight`` more that the consumer still holds (pictures being
    drawn)."""
    held = in_flight + (PREFETCH + 3) * max(1, batch_size)
    return KEPT_BYTES // (3 * held)


def bucket(n: int, batch_size: int | None = None, smallest: int = 1, job: int | None = None) -> int:
    """The number of rows a batch of ``n`` runs at on a compiling engine (JAX).

    In a ``job`` of more than one ``batch_size`` batch, every batch runs at ``batch_size``
    rows, the last one padded: a job of 37 images at batch 16 runs 16, 16 and 16 rows, and a
    later job of 35 or 40 reuses that one compiled shape instead of compiling 8 (or 5) rows
    again. A job shorter than one batch (or one whose length is not given) runs at the next
    power of two, at least ``smallest`` and at most ``batch_size``: a 1-image job at batch
    256 runs 1 row, a 5-image job 8, and a later 6-image job 8 again, so such jobs compile at
    most ``log2(batch_size) + 1`` shapes (60 at batch 100 runs 64, 70 runs 100). Without a
    ``batch_size`` (a caller that passes whatever it has) buckets are the powers of two.
    """
    if n < 1:
        raise ValueError(f"a batch has at least one row, got {n}")
    if batch_size and job is not None and int(job) > batch_size >= n:
        return int(batch_size)
    rows = max(int(smallest), 1 << (n - 1).bit_length())
    if batch_size and n <= batch_size:
        return min(rows, int(batch_size))
    return rows


Source = str | os.PathLike | np.ndarray | Image.Image
"""One input: a path (file, folder or glob), an RGB array or a PIL Image."""


# The reason given for an input that names nothing on disk (a path, folder or glob).
MISSING_INPUT = "no such file, folder or matching glob"


class Missing(str):
    """An input path that names nothing on disk, kept at its place among the sources."""


@dataclass
class Item:
    """A decoded input ready for a model, or the error met while decoding it."""

    source: str
    pixels: np.ndarray | None = None  # (H, W, 3) uint8 at the model's input size
    original: np.ndarray | None = None  # the whole picture, where kept (decode_item)
    error: str | None = None
    box: tuple[float, float, float, float] | None = None  # the part `pixels` shows (fit_box)
    shape: tuple[int, int] | None = None  # (height, width) of the decoded picture


def source_name(source) -> str:
    """How a source is named in results: its path, else ``<array>`` or ``<image>``."""
    if isinstance(source, str | os.PathLike):
        return str(os.fspath(source))
    return "<image>" if isinstance(source, Image.Image) else "<array>"


def load_source(source, size: tuple[int, int] | None = None) -> np.ndarray:
    """One source as (H, W, 3) uint8 RGB: at full resolution, or, when only a ``size`` input
    is needed, a large file decoded at reduced size (at least twice ``size``; see
    `kerascope.images.load_image`).

    Raises:
        ImageError: an unreadable file. ValueError: an array or image that is not a picture.
    """
    if isinstance(source, str | os.PathLike):
        return load_image(source, min_size=size)
    if isinstance(source, Image.Image):
        return as_rgb_array(np.asarray(to_rgb(source)))  # what a file of it would give
    return as_rgb_array(source)


def decode_item(source, size: tuple[int, int], keep_up_to: int = 0, convention: Any = None) -> Item:
    """Decode one source and fit it to ``size`` under ``convention`` (`kerascope.images.fit`;
    ``None``: squash); a failure comes back as ``Item.error``. The decode is also kept as
    ``Item.original`` when it is the whole picture at full size (no reduced decode of a large
    file) of at most ``keep_up_to`` pixels, for a caller that draws the picture too."""
    name = source_name(source)
    if isinstance(source, Missing):
        return Item(name, error=MISSING_INPUT)
    try:
        if isinstance(source, str | os.PathLike):
            image, whole = load_image_whole(source, min_size=size)
        else:
            image, whole = load_source(source), True
    except ImageError as exc:
        return Item(name, error=exc.reason)
    except (ValueError, OSError) as exc:
        return Item(name, error=str(exc))
    box = fit_box(image.shape, size, convention)
    kept = image if whole and image.shape[0] * image.shape[1] <= keep_up_to else None
    return Item(name, fit(image, size, convention), kept, box=box, shape=image.shape[:2])


def normalise_inputs(inputs) -> tuple[list, list[str], list[str]]:
    """Inputs as sources in input order; also the skipped (non-image) and missing paths.

    ``inputs`` is one source or an iterable of them: paths (files, folders walked
    recursively, globs), (H, W, 3) arrays, PIL Images, or an (N, H, W, 3) array. Paths and
    in-memory images are not mixed in one call. Folders and globs expand in place; a missing
    path stays at its position as a :class:`Missing` (and is listed in the third value too).
    A folder link back into a folder it is inside is left out, each said in one warning on
    this module's logger (the commands print it as a note).
    """
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs), [], []
    if isinstance(inputs, str | os.PathLike | np.ndarray | Image.Image):
        inputs = [inputs]
    if isinstance(inputs, bytes | bytearray) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs are paths, folders, globs, RGB arrays or PIL Images (or a list "
                        f"of them), got {type(inputs).__name__}")  # fmt: skip
    inputs = list(inputs)
    kinds = str | os.PathLike | np.ndarray | Image.Image
    odd = [x for x in inputs if not isinstance(x, kinds)]
    if odd:
        raise TypeError(f"inputs are paths, folders, globs, RGB arrays or PIL Images, got "
                        f"{type(odd[0]).__name__} {odd[0]!r:.60}")  # fmt: skip
    images = [x for x in inputs if isinstance(x, np.ndarray | Image.Image)]
    paths = [x for x in inputs if not isinstance(x, np.ndarray | Image.Image)]
    if images and paths:
        raise ValueError("pass either paths or in-memory images (arrays, PIL), not both")
    if images:
        return images, [], []
    found = expand_inputs(paths)
    for link, target in found.cycles:
        _log.warning(loop_note(link, target))
    sources = [Missing(name) if missing else name for name, missing in found.ordered]
    return sources, list(found.skipped), list(found.missing)


def decode_workers() -> int:
    """Threads that decode and fit pictures: one per core this process may run on (Pillow
    releases the GIL while it decodes and resamples), or ``KERASCOPE_DECODE_WORKERS``."""
    wanted = os.environ.get(WORKERS_VAR, "").strip()
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise KerascopeError(f"{WORKERS_VAR}={wanted!r} is not a whole number of threads; "
                                 "unset it to use every core") from None  # fmt: skip
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 2


def _pieces(n: int, workers: int) -> list[tuple[int, int]]:
    """Row ranges of one batch for the pool: about two per worker, so that one slow picture
    does not hold a whole batch while the other threads idle."""
    size = max(1, -(-n // (2 * workers)))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _ahead(batches: Iterator[Callable[[], Any]], depth: int) -> Iterator[Any]:
    """Run ``batches`` ahead: while the consumer holds one result, the next ``depth + 1`` are
    under way. Each item of ``batches`` has already submitted its work to a pool and is the
    function that waits for it; results come in order."""
    queue = deque(itertools.islice(batches, depth + 1))
    while queue:
        wait = queue.popleft()
        queue.extend(itertools.islice(batches, 1))
        yield wait()


def _scheduled(total: int, batch_size: int, submit, depth: int = PREFETCH) -> Iterator[Any]:
    """``submit(pool, pieces, lo, hi)`` for each batch of ``total`` rows on a pool of
    :func:`decode_workers` threads, ``depth + 1`` batches ahead of the consumer; ``pieces`` are
    the batch's row ranges (:func:`_pieces`), one task each."""
    workers = decode_workers()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="kerascope-decode")
    try:
        starts = (submit(pool, _pieces(min(total, lo + batch_size) - lo, workers), lo,
                         min(total, lo + batch_size))
                  for lo in range(0, total, max(1, batch_size)))  # fmt: skip
        yield from _ahead(starts, depth)
    finally:  # a consumer that stops early (Ctrl-C, a deadline) leaves no work queued
        pool.shutdown(wait=True, cancel_futures=True)


def iter_batches(
    inputs: Sequence,
    size: tuple[int, int],
    batch_size: int,
    keep_up_to: int = 0,
    convention: Any = None,
) -> Iterator[list[Item]]:
    """Batches of decoded `Item`s in input order; missing and unreadable ones as error items.

    ``inputs`` are sources as :func:`normalise_inputs` returns them. Decoding runs on a pool of
    :func:`decode_workers` threads, ``PREFETCH + 1`` batches ahead of the consumer. ``keep_up_to``
    as in `decode_item` (`kept_pixels` gives a bound for it).

    ``convention`` (a `kerascope.zoo.registry.InputConvention`) says how pictures are fitted to
    ``size``: classification passes its classifier's (``Classifier.convention``: a centre crop
    for zoo weights measured that way). The default, squash, keeps the whole picture: explain
    and video use it so a heatmap covers everything the user sees, and features and training
    use it because trained models learnt on squashed pictures.
    """
    batch_size = checked_batch_size(batch_size)

    def decode(chunk: Sequence) -> list[Item]:
        return [decode_item(s, size, keep_up_to, convention) for s in chunk]

    def submit(pool, pieces: list, lo: int, hi: int) -> Callable[[], list[Item]]:
        futures = [pool.submit(decode, inputs[lo + a : lo + b]) for a, b in pieces]
        return lambda: [item for f in futures for item in f.result()]

    yield from _scheduled(len(inputs), batch_size, submit)


@dataclass
class PixelBatch:
    """One batch as the model takes it: pixels of every input in one uint8 array.

    Attributes:
        pixels: (rows, H, W, 3) uint8 at the model's input size (or, for a picture batch fitted
            on the device, a slice of it as given); row i is input i of the batch; rows past
            ``n`` (padding to a bucket) and rows of inputs that failed are zeros.
        names: how each input is named in results (:func:`source_name`).
        errors: per input, why it could not be read, else None.
    """

    pixels: np.ndarray
    names: list[str]
    errors: list[str | None]

    @property
    def n(self) -> int:
        """The inputs in this batch (``pixels`` may have more rows: padding)."""
        return len(self.names)

    @property
    def ok(self) -> bool:
        """Whether any input of the batch was read (else it needs no forward pass)."""
        return any(e is None for e in self.errors)


def _fit_into(out: np.ndarray, source, size: tuple[int, int], convention: Any) -> str | None:
    """Decode one source and write it fitted into ``out`` (a row of a batch); the reason on
    failure (the row is then zeroed). An array already at ``size`` under squash is copied as
    it is, with no resampling."""
    if isinstance(source, Missing):
        out[...] = 0
        return MISSING_INPUT
    try:
        image = load_source(source, size)
        squash = getattr(convention, "resize", "squash") == "squash"
        if squash and image.shape[:2] == tuple(size):
            out[...] = image
        else:
            out[...] = fit(image, size, convention)
    except ImageError as exc:
        out[...] = 0
        return exc.reason
    except (ValueError, OSError) as exc:
        out[...] = 0
        return str(exc)
    return None


def iter_pixel_batches(
    inputs: Sequence,
    size: tuple[int, int],
    batch_size: int,
    convention: Any = None,
    rows: Callable[[int], int] | None = None,
) -> Iterator[PixelBatch]:
    """Batches as single uint8 arrays, decoded and fitted straight into them: the fast path
    of classify, predict, evaluate and features (no per-image arrays to stack).

    Like :func:`iter_batches` (same order, errors in place, same thread pool and prefetch),
    but each batch is one :class:`PixelBatch`. ``rows(n)`` is how many rows to allocate for
    ``n`` inputs (``Forward.rows``: the bucket the engine pads to), so no copy is needed to pad.
    """
    batch_size = checked_batch_size(batch_size)
    height, width = (int(s) for s in size)

    def fill(buffer: np.ndarray, chunk: Sequence, errors: list, offset: int) -> None:
        for i, source in enumerate(chunk):
            errors[offset + i] = _fit_into(buffer[offset + i], source, size, convention)

    def submit(pool, pieces: list, lo: int, hi: int) -> Callable[[], PixelBatch]:
        n = hi - lo
        total = max(n, rows(n) if rows is not None else n)
        buffer = np.empty((total, height, width, 3), np.uint8)
        buffer[n:] = 0
        errors: list[str | None] = [None] * n
        chunk = inputs[lo:hi]
        futures = [pool.submit(fill, buffer, chunk[a:b], errors, a) for a, b in pieces]

        def wait() -> PixelBatch:
            for f in futures:
                f.result()
            return PixelBatch(buffer, [source_name(s) for s in chunk], errors)

        return wait

    yield from _scheduled(len(inputs), batch_size, submit)
