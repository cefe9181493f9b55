"""Ctrl-C that always stops a long job, even when Python swallows it.

Python raises the KeyboardInterrupt of a SIGINT wherever the main thread happens to be. When
that is a ``__del__`` method or a weakref callback (JAX and Keras free arrays through both,
many times per batch), Python prints "Exception ignored in ..." and goes on: the job kept
training as if Ctrl-C had never come. :func:`interrupts_kept` remembers every SIGINT, and
:func:`check` (called once per batch: ``training.epochs.InterruptCheck``) raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_received = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    _received.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Within this block a Ctrl-C raises KeyboardInterrupt as always, and is also kept until
    the block ends, so :func:`check` raises it again where the first one was swallowed. Off
    the main thread, or where a handler other than Python's own is installed (a caller that
    handles Ctrl-C itself), the block changes nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):  # fmt: skip
        yield
        return
    _received.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _received.clear()


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came within :func:`interrupts_kept`'s block."""
    if _received.is_set():
        raise KeyboardInterrupt
