"""Batches made ahead on a thread pool, for sequences that ``fit`` reads in order (0, 1, 2 ...).

Why not Keras's own enqueuer (``PyDataset(workers > 1)``): at the end of every pass it waits
0.1 s on an empty queue (``OrderedEnqueuer.stop``), twice per epoch with validation. Measured
with Keras 3.15 on a 3-batch dataset with 2 validation batches: 210 ms per epoch with
``workers=4`` against 1.7 ms with one. On a GPU that is as long as a whole epoch of 1,200
images at 5,000 img/s. This pool lives as long as its sequence and only waits for batches it
was asked for, or, when the order is about to change, for those under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any


class BatchesAhead:
    """``make(index)`` run ahead for the next ``depth`` indices while batch ``index`` is used.

    Reads in order (``index`` 0, or the one after the last read) start the next batches on
    ``threads`` threads; any other read is made on the spot. Batches made ahead are keyed by
    ``version()`` too (the epoch: its order and draws), so a batch of another epoch is never
    returned; :meth:`reset`, before an epoch changes, also waits for those under way, so no
    thread reads the order while it changes.
    """

    def __init__(
        self,
        make: Callable[[int], Any],
        length: Callable[[], int],
        threads: int,
        depth: int,
        version: Callable[[], Any] = lambda: None,
    ):
        if threads < 1 or depth < 1:
            raise ValueError(f"threads and depth must be at least 1, got {threads}, {depth}")
        self._make, self._length, self._version = make, length, version
        self.threads, self.depth = int(threads), int(depth)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[Any, int], Future] = {}
        self._last: int | None = None
        self._lock = threading.Lock()

    def get(self, index: int) -> Any:
        """Batch ``index``: the one made ahead if there is one, else made now. Batches made
        ahead under another ``version()`` (an epoch whose order was changed without `reset`)
        are never returned."""
        with self._lock:
            version = self._version()
            for key in [key for key in self._pending if key[0] != version]:
                self._pending.pop(key).cancel()
            future = self._pending.pop((version, index), None)
            if index == 0 or (self._last is not None and index == self._last + 1):
                self._start(version, range(index + 1, min(index + 1 + self.depth, self._length())))
            self._last = index
        return future.result() if future is not None else self._make(index)

    def _start(self, version: Any, indices: range) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kerascope-batches")
        for index in indices:
            if (version, index) not in self._pending:
                self._pending[version, index] = self._pool.submit(self._make, index)

    def reset(self) -> None:
        """Forget every batch made ahead, after waiting for those being made."""
        with self._lock:
            pending, self._pending, self._last = self._pending, {}, None
        for future in pending.values():
            future.cancel()
        wait(pending.values())

    def close(self) -> None:
        """Stop the threads (they also stop when this object is garbage collected)."""
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
