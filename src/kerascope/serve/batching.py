"""Dynamic batching: requests that arrive together share one forward pass.

A forward pass over 16 images costs far less than 16 passes over one (the onnx engine on 2
cores: see benchmarks/serve.py), so each model has a batcher that gathers what is waiting, up
to ``max_batch`` items, waiting at most ``max_wait_ms`` after the first one for company. While a
batch runs (in the model's own worker thread, never on the event loop), the next one fills up,
so under load batches form with no waiting at all. ``max_batch=1`` switches batching off.

It waits only for requests known to be on their way (`expecting`: being decoded): a lone
client never pays ``max_wait_ms`` for company that is not coming.

A queue is bounded in time and, optionally, in items: a payload that would wait longer than
``queue_timeout`` (estimated from the recent pass times, or measured while it waits) is refused
with `Busy` (503 + ``Retry-After``) instead of holding its client for minutes, and ``max_items``
caps what is queued or running (the expensive methods' budget: `Busy` with ``busy_status``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

from starlette.requests import ClientDisconnect

from kerascope.serve.limits import Busy


class DynamicBatcher:
    """Gather payloads submitted from many requests into calls of ``run(payloads) -> results``.

    Args:
        run: takes a list of payloads, returns one result per payload in the same order; runs
            on ``executor`` (one thread per model keeps one model's passes in sequence).
        executor: where ``run`` is called.
        max_batch: largest list handed to ``run``.
        max_wait_ms: how long the first payload may wait for others.
        queue_timeout: longest wait (s) for a pass to start; None: no limit.
        max_items: most payloads queued or running at once; None: no limit.
        busy_status: the HTTP status of a refusal over ``max_items`` (429: a quota).
        label: what the queue runs, for the refusal messages.

    Example:
        >>> b = DynamicBatcher(lambda xs: [x * 2 for x in xs], pool, max_batch=32)
        >>> await b.submit(21)
        42
    """

    def __init__(
        self,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        executor: Executor,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        queue_timeout: float | None = None,
        max_items: int | None = None,
        busy_status: int = 503,
        label: str = "the model",
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.batches = 0  # forward passes run, and the items they carried: for /healthz, tests
        self.items = 0
        self.largest = 0
        self.queue_timeout, self.max_items = queue_timeout, max_items
        self.busy_status, self.label = busy_status, label
        self.refused = 0  # payloads turned away (queue too long, deadline passed, over budget)
        self._running = 0  # payloads in the pass now running
        self._running_since = 0.0  # when that pass started (time.perf_counter)
        self._pass_s: float | None = None  # smoothed duration of one pass
        self._pending: collections.deque = collections.deque()
        self._incoming = 0  # payloads announced by `expecting` and not yet queued
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @contextlib.contextmanager
    def expecting(self, n: int) -> Iterator[None]:
        """Announce ``n`` payloads while they are being prepared (decoded), so a batch that
        is forming waits for them; call `enqueue` right after the block, with no await between.
        """
        self._incoming += n
        try:
            yield
        finally:
            self._incoming -= n
            if self._wake is not None:
                self._wake.set()  # a forming batch re-checks whether to wait any longer

    def stats(self) -> dict[str, int]:
        """Passes run, images carried, largest pass; images queued, running and refused."""
        return {"batches": self.batches, "items": self.items, "largest": self.largest,
                "queued": self._queued(), "running": self._running,
                "refused": self.refused}  # fmt: skip

    def expected_wait(self) -> float:
        """Seconds until a payload queued now would start: what is left of the running pass,
        then the queued passes, each at the recent pass time. (Counting the running pass in
        full refused requests that would have started well within the queue limit.)"""
        if self._pass_s is None:
            return 0.0
        left = 0.0
        if self._running:
            left = max(0.0, self._pass_s - (time.perf_counter() - self._running_since))
        return left + math.ceil(self._queued() / self.max_batch) * self._pass_s

    def _queued(self) -> int:
        """Payloads waiting whose clients still wait: a request cancelled (its client hung up,
        `until_gone`) stays in the deque until a pass skips it, but holds no place."""
        return sum(not future.done() for _, future, _ in self._pending)

    def enqueue(self, payloads: Sequence[Any]) -> list[asyncio.Future]:
        """Queue payloads at once (no await: they join the same batch); await the futures.

        Raises:
            Busy: over ``max_items``, or the wait would pass ``queue_timeout``.
        """
        loop = asyncio.get_running_loop()
        wait = self.expected_wait()
        held = self._queued() + self._running
        if self.max_items is not None and held + len(payloads) > self.max_items:
            self.refused += len(payloads)
            retry = wait + (self._pass_s or 1.0)
            raise Busy(
                f"{self.label}: {held} {'image' if held == 1 else 'images'} queued or running, "
                f"the most this server takes at once is {self.max_items}; retry in about "
                f"{math.ceil(retry)} s",
                retry_after=retry,
                status=self.busy_status,
            )
        if self.queue_timeout is not None and wait > self.queue_timeout:
            self.refused += len(payloads)
            raise Busy(
                f"{self.label} is busy: about {wait:.0f} s of work queued, over this server's "
                f"{self.queue_timeout:g} s queue limit; retry later",
                retry_after=wait,
            )
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._work(), name="kerascope-batcher")
        futures = []
        for payload in payloads:
            futures.append(loop.create_future())
            self._pending.append((payload, futures[-1], loop.time()))
        if self.queue_timeout is not None:  # refused on time, not when the running pass ends
            loop.call_later(self.queue_timeout, lambda: self._expire(loop.time()))
        self._wake.set()
        return futures

    async def submit(self, payload: Any) -> Any:
        """Queue one payload and wait for its result (the exception ``run`` raised, if any)."""
        return await self.enqueue([payload])[0]

    async def run_all(self, payloads: Sequence[Any]) -> list[Any]:
        """Queue payloads together and wait for all their results, in order."""
        return list(await self.queued(payloads))

    def queued(self, payloads: Sequence[Any]) -> asyncio.Future:
        """Queue payloads together now (no await: right after `expecting`, so a forming batch
        takes them) and return one future of all their results, in order; cancelling it takes
        them out of the queue."""
        if not payloads:
            done = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        futures = self.enqueue(payloads)
        together = asyncio.gather(*futures)

        def drop_the_rest(done: asyncio.Future) -> None:
            # One payload refused (its deadline) or the request cancelled: its other payloads
            # leave the queue too, so no pass runs for a request already answered.
            if done.cancelled() or done.exception() is not None:
                for future in futures:
                    future.cancel()

        together.add_done_callback(drop_the_rest)
        return together

    async def close(self) -> None:
        """Stop the worker; payloads still queued get a CancelledError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            self._pending.popleft()[1].cancel()

    def _expire(self, now: float) -> None:
        """Refuse the payloads that have waited past ``queue_timeout`` (their clients get a
        503 now instead of a result much later); the others keep their places."""
        if self.queue_timeout is None:
            return
        kept: collections.deque = collections.deque()
        for payload, future, since in self._pending:
            if now - since >= self.queue_timeout - 1e-3 and not future.done():
                self.refused += 1
                future.set_exception(Busy(
                    f"waited {now - since:.0f} s for {self.label}, over this server's "
                    f"{self.queue_timeout:g} s queue limit; retry later",
                    retry_after=self.expected_wait(),
                ))  # fmt: skip
            elif not future.done():
                kept.append((payload, future, since))
        self._pending = kept

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        """Wait for a first payload, then for company until full or ``max_wait`` has passed."""
        loop = asyncio.get_running_loop()
        self._expire(loop.time())
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        deadline = loop.time() + self.max_wait
        while len(self._pending) < self.max_batch and self._incoming > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:  # an Event holds no item, so a timeout here can never lose a payload
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        take = min(self.max_batch, len(self._pending))
        batch = [self._pending.popleft() for _ in range(take)]
        return [(p, f) for p, f, _ in batch if not f.done()]  # a client gone: slot freed

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            payloads = [p for p, _ in batch]
            self._running = len(payloads)
            start = self._running_since = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run, payloads)
                if len(results) != len(payloads):
                    raise RuntimeError(f"batch of {len(payloads)} gave {len(results)} results")
            except Exception as exc:  # noqa: BLE001  (handed to every waiting request)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._running = 0
                took = time.perf_counter() - start
                self._pass_s = took if self._pass_s is None else 0.7 * self._pass_s + 0.3 * took
            self.batches += 1
            self.items += len(payloads)
            self.largest = max(self.largest, len(payloads))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


async def hung_up(receive: Callable[[], Any]) -> None:
    """Return when the client of a request whose body was read hangs up (``receive``: its ASGI
    receive; after the body only a disconnect comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_gone(receive: Callable[[], Any], work: asyncio.Future) -> Any:
    """``await work``, cancelled if the client hangs up first (Starlette's ``ClientDisconnect``,
    answered 499 to nobody): its payloads leave their queue. Before, a reloaded page's
    abandoned Score-CAM requests held the expensive quota (429 for the page's next one) until
    their passes ran, about 40 s. ``receive``: the request's ASGI receive, read after its body
    (only a disconnect comes). ``work``: a future already queued (`DynamicBatcher.queued`): a
    coroutine would queue a loop turn late, after a forming batch had left without it."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(hung_up(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        task.add_done_callback(_retrieved)  # else asyncio logs "exception was never retrieved"
        raise ClientDisconnect
    return task.result()


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
