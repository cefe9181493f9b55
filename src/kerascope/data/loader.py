"""Batches of decoded images for ``model.fit`` without TensorFlow.

Training is bound by JPEG decoding, not by the model (see DESIGN.md), so besides decoding on
worker threads this loader can keep a decoded-once uint8 cache: one memory-mapped ``.npy``
per (files, image size), filled as batches are first read (or eagerly with
:meth:`FolderSequence.fill_cache`) and reused by later epochs and later runs. Batches stay
uint8 (0..255, as kerascope models expect) until they reach the device.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.ahead import BatchesAhead  # noqa: E402
from kerascope.data.cache_budget import make_room, touch  # noqa: E402
from kerascope.images import load_image, resize  # noqa: E402

if TYPE_CHECKING:
    from kerascope.data.folders import Dataset

_CACHE_VERSION = 1  # bump when decoding or resizing changes, so old caches are not reused


def decode_workers() -> int:
    """Threads that decode JPEGs: one per core (Pillow releases the GIL while decoding and
    resizing, so threads scale; a 16-core machine decodes on 16)."""
    return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None
_NO_CACHE_SAID: set[str] = set()  # cache folders this process said it trains without


def _pool() -> ThreadPoolExecutor:
    """The process's decode pool, made on first use and shared by every sequence."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(decode_workers(), thread_name_prefix="kerascope-decode")
    return _POOL


def default_cache_dir() -> Path:
    """``$KERASCOPE_HOME/datasets`` if set, else ``$XDG_CACHE_HOME/kerascope/datasets``.

    Kept apart from the weights cache: decoded datasets are large and safe to delete.
    """
    if os.environ.get("KERASCOPE_HOME"):
        return Path(os.environ["KERASCOPE_HOME"]).expanduser() / "datasets"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "kerascope" / "datasets"


def cache_key(paths: Sequence[str], image_size: tuple[int, int]) -> str:
    """Hash of (absolute path, size, mtime) of every file, in order, and the image size.

    Size and mtime change when a file is replaced or edited, so a stale cache is never read;
    hashing the contents would mean reading the whole dataset just to find the cache.
    """
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
            entries.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
        except OSError:
            entries.append([os.path.abspath(p), -1, -1])
    blob = json.dumps([_CACHE_VERSION, list(image_size), entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def reserve_blocks(path: str | os.PathLike) -> None:
    """Allocate a (sparse) file's blocks now: writing through a memory map into a hole on a
    full disk is a SIGBUS that kills the process, while this fails with ENOSPC, cleanly."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
    finally:
        os.close(fd)


def share_part(size: int, index: int, count: int) -> slice:
    """Positions of part ``index`` of ``count`` equal parts of a batch of ``size`` rows: what
    one process of a multi-process run feeds (``kerascope.training.devices``)."""
    part = size // count
    return slice(index * part, (index + 1) * part)


class FolderSequence(keras.utils.PyDataset):
    """``(images, labels)`` batches from ``(path, label)`` pairs, for ``fit``/``evaluate``.

    Images are decoded by :func:`kerascope.images.load_image` and resized to ``image_size``
    with its antialiased filter, so training sees exactly what prediction will see. Keras
    runs ``__getitem__`` on ``workers`` threads (Pillow releases the GIL while decoding).
    With ``shuffle`` the order is a permutation drawn from ``(seed, epoch)``: the same seed
    gives the same batches in every run. Pass ``shuffle=False`` to ``model.fit`` (or seed
    Python's ``random``): Keras otherwise also shuffles batch order, unseeded.

    Args:
        items: ``(path, label)`` pairs, e.g. ``Dataset.splits["train"]``.
        classes: class names; only kept so a model can be saved with its labels.
        image_size: ``(height, width)`` or one int for square images.
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reshuffle every epoch (training); keep file order otherwise.
        seed: seed of the per-epoch permutation.
        workers: decoding threads (or processes) used by Keras.
        use_multiprocessing: decode in processes instead of threads.
        cache: ``None`` to decode every epoch, ``True`` for :func:`default_cache_dir`, or
            a folder for the memory-mapped decoded cache.
        dtype: ``"uint8"`` (default; keep it until the device) or ``"float32"`` (0..255).
        max_queue_size: batches prepared ahead by the workers.
        share: ``(index, count)`` in a run of ``count`` processes: this process feeds only
            part ``index`` of every batch (:func:`share_part`), so :meth:`fill_cache` decodes
            only the rows it feeds and ``load_rows(rows, fed_part())`` reads nothing else.

    Example:
        >>> ds = scan_dataset("data")  # doctest: +SKIP (the three lines need a dataset)
        >>> train = FolderSequence(ds.splits["train"], ds.classes, 150, shuffle=True)
        >>> model.fit(train, epochs=10, shuffle=False)  # doctest: +SKIP
    """

    def __init__(
        self,
        items: Sequence[tuple[str | os.PathLike, int]],
        classes: Sequence[str],
        image_size: int | tuple[int, int],
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 2,
        use_multiprocessing: bool = False,
        cache: bool | str | os.PathLike | None = None,
        dtype: str = "uint8",
        max_queue_size: int = 10,
        share: tuple[int, int] | None = None,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if not items:
            raise ValueError("FolderSequence needs at least one (path, label) item")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if dtype not in ("uint8", "float32"):
            raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        self.paths = [os.fspath(p) for p, _ in items]
        self.labels = np.asarray([int(label) for _, label in items], dtype=np.int32)
        self.classes = list(classes)
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise ValueError(f"labels must be in 0..{len(self.classes) - 1}")
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.dtype = dtype
        if share is not None and not 0 <= share[0] < share[1]:
            raise ValueError(f"share must be (index, count) with 0 <= index < count, got {share}")
        self.share = None if share is None or share[1] == 1 else (int(share[0]), int(share[1]))
        self.epoch = 0
        self._order = self._permutation()
        self.cache_path: Path | None = None
        self._pixels: np.ndarray | None = None  # (N, H, W, 3) uint8 memmap
        self._filled: np.ndarray | None = None  # (N,) uint8 memmap, 1 once a row is written
        self._cache_off = False  # the cache could not be made: decode every epoch
        if cache is not None and cache is not False:
            folder = default_cache_dir() if cache is True else Path(cache).expanduser()
            key = cache_key(self.paths, self.image_size)
            self.cache_path = folder / f"{key}.npy"
            self._open_cache()

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        rows = self.batch_rows(index)
        return self.load_rows(rows), self.labels[rows]

    def batch_rows(self, index: int) -> np.ndarray:
        """Which rows (indices into ``paths``) batch ``index`` holds in the current epoch."""
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def padded_rows(self, index: int) -> tuple[np.ndarray, int]:
        """Batch ``index``'s rows padded to the full batch size (by repeating its first row),
        and how many are real: one batch shape means one compiled step, the last batch
        included. Padded rows must weigh 0 (:func:`kerascope.training.padded.sample_weights`)."""
        rows = self.batch_rows(index)
        real = len(rows)
        if real < self.batch_size:
            rows = np.concatenate([rows, np.full(self.batch_size - real, rows[0], rows.dtype)])
        return rows, real

    def fed_part(self, size: int | None = None) -> slice:
        """The positions of a (padded) batch of ``size`` rows that this process feeds: all of
        them alone, its equal part with a ``share``."""
        if self.share is None:
            return slice(None)
        return share_part(self.batch_size if size is None else size, *self.share)

    def fed_rows(self) -> np.ndarray:
        """The rows this process feeds in the current epoch (sorted): every row alone, the
        rows at its part of every padded batch with a ``share``."""
        if self.share is None:
            return np.arange(len(self.paths))
        part = self.fed_part()
        return np.unique(np.concatenate([self.padded_rows(b)[0][part] for b in range(len(self))]))

    def load_rows(self, rows: np.ndarray, part: slice | None = None) -> np.ndarray:
        """The images of ``rows`` as one batch: cached rows from the memmap, others decoded.
        With ``part`` only those positions are read; the others stay zero (another process
        feeds them)."""
        if part is not None and part != slice(None):
            images = np.zeros((len(rows), *self.image_size, 3), dtype=self.dtype)
            images[part] = self.load_rows(np.asarray(rows)[part])
            return images
        images = np.empty((len(rows), *self.image_size, 3), dtype=np.uint8)
        todo = range(len(rows))
        if self.cache_path is not None:
            self._open_cache()
            hit = self._filled[rows].astype(bool)
            by_row = np.flatnonzero(hit)[np.argsort(rows[hit])]  # read the file front to back
            images[by_row] = self._pixels[rows[by_row]]
            todo = np.flatnonzero(~hit).tolist()
        todo = list(todo)
        if len(todo) > 1:  # not cached: decode the batch on every core
            for j, image in zip(todo, _pool().map(self._image, [int(rows[j]) for j in todo]),
                                strict=True):  # fmt: skip
                images[j] = image
        elif todo:
            images[todo[0]] = self._image(int(rows[todo[0]]))
        return images.astype(self.dtype, copy=False)

    def on_epoch_end(self) -> None:
        """Advance to the next epoch's permutation and flush cache writes to disk."""
        self.set_epoch(self.epoch + 1)
        if self._pixels is not None:
            self._pixels.flush()
            self._filled.flush()

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order (resuming a run reproduces the batches it would have seen)."""
        self.epoch = int(epoch)
        self._order = self._permutation()

    @property
    def cached_count(self) -> int:
        """How many images are already in the decoded cache (0 without a cache)."""
        self._open_cache()
        return 0 if self._filled is None else int(np.count_nonzero(self._filled))

    def fill_cache(
        self, progress: Callable[[int, int], None] | None = None, workers: int | None = None
    ) -> int:
        """Decode every image not yet cached, on a thread pool; return how many were decoded.

        Doing this before ``fit`` makes epoch 1 as fast as the rest and lets a progress bar
        show the one slow pass. ``progress(done, total)`` counts the missing images. With a
        ``share`` only the rows this process feeds in the current epoch are decoded (the
        others are another process's; a later epoch's new rows are decoded as they come).
        """
        self._open_cache()
        if self._filled is None:
            if self._cache_off:
                return 0
            raise ValueError("fill_cache needs a cache: construct FolderSequence with cache=...")
        fed = self.fed_rows()
        missing = fed[self._filled[fed] == 0].tolist()
        workers = workers or decode_workers()
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(self._image, missing), 1):
                if progress:
                    progress(done, len(missing))
        self._pixels.flush()
        self._filled.flush()
        return len(missing)

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def _decode(self, i: int) -> np.ndarray:
        return resize(load_image(self.paths[i]), self.image_size)

    def _image(self, i: int) -> np.ndarray:
        """Row ``i``: from the cache when filled, else decoded (and cached)."""
        if self.cache_path is None:
            return self._decode(i)
        self._open_cache()
        if self._filled[i]:
            return self._pixels[i]
        image = self._decode(i)
        self._pixels[i] = image
        self._filled[i] = 1  # written after the pixels, so a set flag means a full row
        return image

    def _open_cache(self) -> None:
        """Open (or create) the memmaps; lazily, so worker processes open their own."""
        if self.cache_path is None or self._pixels is not None:
            return
        shape = (len(self.paths), *self.image_size, 3)
        mask = self.cache_path.with_suffix(".filled.npy")
        try:
            pixels = np.lib.format.open_memmap(self.cache_path, mode="r+")
            filled = np.lib.format.open_memmap(mask, mode="r+")
            if pixels.shape != shape or filled.shape != shape[:1]:
                raise ValueError("cache shape mismatch")
            reserve_blocks(self.cache_path)  # made sparse by an older kerascope, perhaps
            touch(self.cache_path)  # used now: the last to go (`cache_budget`)
        except (OSError, ValueError):
            try:
                pixels, filled = self._create_cache(shape, mask)
            except OSError as exc:
                self._no_cache(exc)
                return
        self._pixels, self._filled = pixels, filled

    def _no_cache(self, exc: OSError) -> None:
        """Train without the cache when it cannot be made (a full disk): decoding every epoch
        is slower, never wrong; said once per folder and process, on stderr (the training
        and validation images each have a cache: the line came twice)."""
        import sys

        from kerascope.output import printable

        folder = str(self.cache_path.parent)
        if folder not in _NO_CACHE_SAID:
            _NO_CACHE_SAID.add(folder)
            print(f"kerascope: no decoded-image cache in '{printable(folder)}' "
                  f"({exc.strerror or exc}); decoding the images every epoch instead",
                  file=sys.stderr)  # fmt: skip
        self.cache_path, self._cache_off = None, True

    def _create_cache(self, shape: tuple[int, ...], mask: Path) -> tuple[np.ndarray, np.ndarray]:
        """Create both files under temporary names, then rename: never a half-made cache."""
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        make_room(self.cache_path.parent, int(np.prod(shape)) + shape[0])
        tmp = f".tmp-{os.getpid()}-{id(self)}"
        tmp_pixels = self.cache_path.with_name(self.cache_path.name + tmp)
        tmp_mask = mask.with_name(mask.name + tmp)
        try:
            for tmp_file, dims in ((tmp_pixels, shape), (tmp_mask, shape[:1])):
                np.lib.format.open_memmap(tmp_file, mode="w+", dtype=np.uint8, shape=dims).flush()
                reserve_blocks(tmp_file)
        except OSError:
            tmp_pixels.unlink(missing_ok=True)
            tmp_mask.unlink(missing_ok=True)
            raise
        os.replace(tmp_pixels, self.cache_path)  # pixels first: the mask vouches for them
        os.replace(tmp_mask, mask)
        return (
            np.lib.format.open_memmap(self.cache_path, mode="r+"),
            np.lib.format.open_memmap(mask, mode="r+"),
        )

    def __getstate__(self) -> dict:
        """Memmaps pickle as copies; drop them so each worker process maps the file itself."""
        state = self.__dict__.copy()
        state["_pixels"] = state["_filled"] = None
        return state


def fitted_batch(batch_size: int, images: int, multiple: int = 1) -> int:
    """``batch_size``, or fewer for fewer ``images``: their count rounded up to ``multiple``."""
    return max(1, min(int(batch_size), -(-int(images) // multiple) * multiple))


def make_sequences(
    dataset: Dataset,
    image_size: int | tuple[int, int],
    batch_size: int = 32,
    seed: int = 0,
    multiple: int = 1,
    **kwargs,
) -> dict[str, FolderSequence]:
    """One :class:`FolderSequence` per split of a ``Dataset``; only ``train`` is shuffled.

    A split smaller than ``batch_size`` gets batches of its own size, rounded up to a
    ``multiple`` (the devices a batch is split over): batches are padded to their full size,
    and 24 images padded to a batch of 3,000 took 24 GB."""
    return {
        split: FolderSequence(
            items,
            dataset.classes,
            image_size,
            batch_size=fitted_batch(batch_size, len(items), multiple),
            shuffle=split == "train",
            seed=seed,
            **kwargs,
        )
        for split, items in dataset.splits.items()
    }


class DerivedSequence(keras.utils.PyDataset):
    """Batches made from a :class:`FolderSequence` (``self.images``): its length, order and
    epoch, so the trainers' sequences (device feed, split prefix) follow the one shuffle.

    Subclasses make batch ``index`` in :meth:`make_batch`. With ``threads``, the next
    ``ahead`` batches are made on that many threads while one is used
    (:class:`kerascope.data.ahead.BatchesAhead`): Keras itself reads it on one thread, so its
    enqueuer's 0.1 s wait at the end of every pass is gone.
    """

    images: FolderSequence

    def __init__(self, threads: int = 0, ahead: int = 4):
        super().__init__(workers=1, use_multiprocessing=False)
        self.threads, self.ahead = int(threads), int(ahead)
        self._ahead = None
        if threads:
            self._ahead = BatchesAhead(self.make_batch, self.__len__, threads, ahead,
                                       version=lambda: self.epoch)  # fmt: skip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        return self._ahead.get(index) if self._ahead is not None else self.make_batch(index)

    def make_batch(self, index: int) -> Any:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        return self.images.epoch

    def set_epoch(self, epoch: int) -> None:
        if self._ahead is not None:
            self._ahead.reset()  # batches made ahead were drawn for the old epoch
        self.images.set_epoch(epoch)

    def on_epoch_end(self) -> None:
        if self._ahead is not None:
            self._ahead.reset()
        self.images.on_epoch_end()
