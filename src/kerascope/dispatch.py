"""Batches through a device one ahead: batch i + 1 is dispatched before batch i's results are
copied back and given out, so the device computes while the host hands out the batch before
(JAX and CUDA queue the work; `kerascope.inference.Pending` waits for it). One loop for
classify, its in-memory arrays and explain."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from kerascope import interrupts

B = TypeVar("B")
R = TypeVar("R")


def dispatch_ahead(
    batches: Iterable[B],
    start: Callable[[B], Any],
    finish: Callable[[B, Any], Iterable[R]],
    ahead: bool = True,
) -> Iterator[R]:
    """``finish(batch, start(batch))``'s items for every batch, in order.

    With ``ahead``, ``start`` of the next batch runs before ``finish`` of this one; without,
    each batch is finished before the next starts (a CPU, whose cores are the host's). A batch
    already started is never lost: when reading or starting the next one fails, it is
    finished and given out first, then the error is raised."""
    pending = None
    batches = iter(batches)
    while True:
        interrupts.check()  # a Ctrl-C swallowed by a finalizer
        try:
            batch = next(batches, _END)
            if batch is _END:
                break
            running = start(batch)
        except Exception:
            if pending is not None:
                yield from finish(*pending)
            raise
        if pending is not None:
            yield from finish(*pending)
        pending = (batch, running)
        if not ahead:
            yield from finish(*pending)
            pending = None
    if pending is not None:
        yield from finish(*pending)


_END = object()
