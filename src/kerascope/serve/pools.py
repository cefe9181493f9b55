"""Where a request's decoding and drawing run: a light lane and a heavy lane, off the event loop.

One client's large decodes must not hold up the small requests of everyone else. Each request is
weighed from its headers first (`kerascope.serve.uploads.weigh`, on a thread of its own: header
reads are bounded by the body limit), in megapixels of decode *work*, not only pixels held: a
16-bit RGBA PNG costs more per pixel than an 8-bit grey one, a JPEG decoded reduced costs less,
and every progressive scan walks all its blocks again. A request under `LIGHT_WORK` is decoded at
once on the light lane; a heavier one waits for a slot of the heavy lane (first come, first
served, one slot per heavy thread) and gets a 503 + ``Retry-After`` when that wait would pass the
server's ``--queue-timeout-s``, as for the model queues. So a cheap classify never queues behind
a 62 MP PNG, and the pool threads behind the heavy lane are few (half the cores). A waiter whose
client hangs up leaves the queue at once; explain's drawing, after its model pass, goes before
the requests still to decode and is never refused (its pass would be wasted).

Every thread here is a daemon (`DaemonPool`): a stopping server never waits for a decode still
running (a scan-bomb JPEG held a SIGTERM'd process 38 s before).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future

from starlette.requests import ClientDisconnect

from kerascope.serve.limits import Busy

Gone = Callable[[], Awaitable[object]]
"""Returns an awaitable that ends when a request's client hangs up (`batching.hung_up`)."""

LIGHT_WORK = 8_000_000
"""Decode work (pixel-equivalents: 8-bit RGB pixels decoded) of a request the light lane takes:
a 12 MP phone JPEG of 4 MB decoded reduced for classify is about 4.5 M; a 62 MP PNG 62 M."""


class DaemonPool(Executor):
    """A thread pool whose threads are daemons: the interpreter's exit does not join them (the
    standard pool's threads are joined at exit, so a running decode held a stopped server)."""

    def __init__(self, workers: int, name: str):
        self.workers, self.name = max(1, workers), name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is shut down")
            self._jobs.put((future, fn, args, kwargs))
            if len(self._threads) < self.workers:  # started as needed, then kept
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            del job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001  (handed to the caller)
                    future.set_exception(exc)
            del future, fn, args, kwargs  # no finished job's pixels kept while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; ``cancel_futures`` cancels what has not started. Running work is
        never waited for unless ``wait``."""
        with self._lock:
            self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class HeavyGate:
    """First-come slots of the heavy lane, awaited on the event loop with a deadline.

    Two queues: requests still to decode (``waiting``, first come first served, refused at the
    deadline) and requests resuming after their model pass (``resuming``: explain's drawing),
    served first and never refused, so no model pass already run is thrown away. A waiter whose
    client hangs up (``gone``) leaves its queue at once instead of taking its turn for nobody.
    """

    def __init__(self, slots: int, timeout: float):
        self.slots, self.timeout = max(1, slots), timeout
        self.held = 0
        self.refused = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._resuming: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot, in both queues."""
        return len(self._waiting) + len(self._resuming)

    @contextlib.asynccontextmanager
    async def slot(
        self, what: str, gone: Gone | None = None, resume: bool = False
    ) -> AsyncIterator[None]:
        """Hold a slot for the block (``what``: the work, for the refusal's words).

        ``gone``: returns an awaitable that ends when the request's client hangs up (then
        `ClientDisconnect`). ``resume``: the request's earlier work is done (its model pass):
        it goes before every request still to decode and waits as long as it takes.

        Raises:
            Busy: no slot came within the timeout (503 + Retry-After).
            ClientDisconnect: the client hung up while waiting.
        """
        if self.held < self.slots and not self.queued:
            self.held += 1
        else:
            await self._wait(what, gone, self._resuming if resume else self._waiting)
        try:
            yield
        finally:
            self._release()

    async def _wait(self, what: str, gone: Gone | None, line: collections.deque) -> None:
        """Wait in ``line`` until `_release` hands this request a slot. ``asyncio.wait``, not
        ``wait_for``: on Python 3.11 ``wait_for`` swallowed a cancellation that came in the loop
        turn the slot was handed over, and the request went on for a client long gone."""
        waiter = asyncio.get_running_loop().create_future()
        line.append(waiter)
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        deadline = None if line is self._resuming else self.timeout
        try:
            await asyncio.wait({waiter} | ({watch} if watch else set()), timeout=deadline,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        except BaseException:  # cancelled (a stopping server): the slot, if handed, goes on
            self._leave(waiter, line)
            raise
        finally:
            if watch is not None:
                watch.cancel()
                watch.add_done_callback(_retrieved)
        left = watch is not None and watch.done() and not watch.cancelled()
        if waiter.done() and not left:
            return  # the slot is this request's (handed over: ``held`` counts it already)
        self._leave(waiter, line)
        if left:
            raise ClientDisconnect
        self.refused += 1
        raise Busy(
            f"waited {self.timeout:g} s for the server to finish decoding large images "
            f"of other requests before {what} (this server's --queue-timeout-s); "
            "retry later, or send smaller images",
            retry_after=self.timeout / 2,
        )

    def _leave(self, waiter: asyncio.Future, line: collections.deque) -> None:
        """Take ``waiter`` out of ``line``; a slot already handed to it goes to the next."""
        if waiter in line:
            line.remove(waiter)
        elif waiter.done() and not waiter.cancelled():
            self._release()

    def _release(self) -> None:
        for line in (self._resuming, self._waiting):  # straight to the next still waiting
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.held -= 1


def _retrieved(future: asyncio.Future) -> None:
    """Read a finished watch's outcome, so asyncio logs no "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


class Lanes:
    """The pools of one app: ``headers`` (weighing), ``light`` and ``heavy`` (decode, draw)."""

    def __init__(self, queue_timeout: float, cores: int | None = None):
        cores = cores or os.cpu_count() or 2
        heavy = max(1, min(4, cores // 2))
        self.headers = DaemonPool(1, "kerascope-headers")
        self.light = DaemonPool(min(8, max(2, cores)), "kerascope-decode")
        self.heavy = DaemonPool(heavy, "kerascope-decode-large")
        self.gate = HeavyGate(heavy, queue_timeout)

    @contextlib.asynccontextmanager
    async def lane(
        self, work: int, what: str, gone: Gone | None = None, resume: bool = False
    ) -> AsyncIterator[Executor]:
        """The pool for a request of ``work``; a heavy one holds a slot for the block
        (``gone``, ``resume``: as `HeavyGate.slot`)."""
        if work <= LIGHT_WORK:
            yield self.light
            return
        async with self.gate.slot(what, gone, resume):
            yield self.heavy

    def stats(self) -> dict[str, int]:
        """What ``/healthz`` says of the heavy lane: slots, requests in them, waiting, refused."""
        return {"heavy_slots": self.gate.slots, "heavy_running": self.gate.held,
                "heavy_waiting": self.gate.queued,
                "heavy_refused": self.gate.refused}  # fmt: skip

    def shutdown(self) -> None:
        for pool in (self.headers, self.light, self.heavy):
            pool.shutdown(wait=False, cancel_futures=True)
