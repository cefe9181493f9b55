"""Dynamic batching: requests that arrive together share one forward pass.

A forward pass over 16 images costs far less than 16 passes over one (the onnx engine on 2
cores: see benchmarks/serve.py), so each model has a batcher that gathers what is waiting, up
to ``max_batch`` items, waiting at most ``max_wait_ms`` after the first one for company. While a
batch runs (in the model's own worker thread, never on the event loop), the next one fills up,
so under load batches form with no waiting at all. ``max_batch=1`` switches batching off.

It waits only for requests known to be on their way (`expecting`: being decoded): a lone
client never pays ``max_wait_ms`` for company that is not coming.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any


class DynamicBatcher:
    """Gather payloads submitted from many requests into calls of ``run(payloads) -> results``.

    Args:
        run: takes a list of payloads, returns one result per payload in the same order; runs
            on ``executor`` (one thread per model keeps one model's passes in sequence).
        executor: where ``run`` is called.
        max_batch: largest list handed to ``run``.
        max_wait_ms: how long the first payload may wait for others.

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

    def enqueue(self, payloads: Sequence[Any]) -> list[asyncio.Future]:
        """Queue payloads at once (no await: they join the same batch); await the futures."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._work(), name="kerascope-batcher")
        futures = []
        for payload in payloads:
            futures.append(loop.create_future())
            self._pending.append((payload, futures[-1]))
        self._wake.set()
        return futures

    async def submit(self, payload: Any) -> Any:
        """Queue one payload and wait for its result (the exception ``run`` raised, if any)."""
        return await self.enqueue([payload])[0]

    async def run_all(self, payloads: Sequence[Any]) -> list[Any]:
        """Queue payloads together and wait for all their results, in order."""
        return list(await asyncio.gather(*self.enqueue(payloads))) if payloads else []

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

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        """Wait for a first payload, then for company until full or ``max_wait`` has passed."""
        loop = asyncio.get_running_loop()
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
        return [(p, f) for p, f in batch if not f.done()]  # a client gone: its slot is freed

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            payloads = [p for p, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.run, payloads)
                if len(results) != len(payloads):
                    raise RuntimeError(f"batch of {len(payloads)} gave {len(results)} results")
            except Exception as exc:  # noqa: BLE001  (handed to every waiting request)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(payloads)
            self.largest = max(self.largest, len(payloads))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
