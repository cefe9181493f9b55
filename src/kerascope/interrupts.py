"""Ctrl-C, SIGTERM and SIGHUP stop a long job the same way, even when Python swallows them.

Python raises the KeyboardInterrupt of a SIGINT wherever the main thread happens to be. When
that is a ``__del__`` method or a weakref callback (JAX and Keras free arrays through both,
many times per batch), Python prints "Exception ignored in ..." and goes on: the job kept
training as if Ctrl-C had never come. :func:`interrupts_kept` remembers every such signal,
and :func:`check` (called once per batch: ``training.epochs.InterruptCheck``, the classify and
explain batch loop, video frames) raises it again; Python's "Exception ignored" report of it
is not printed.

SIGTERM (a job scheduler, ``kill``, ``timeout``) and SIGHUP (a closed terminal) ended the
process at once, leaving hidden ``.partial`` files and no word of what was written. Inside the
block they raise :class:`Terminated`, a KeyboardInterrupt, so every Ctrl-C path runs: temp
files removed, results so far written, the last epoch saved; the exit code is 128 + the
signal's number, as a shell reports a process the signal ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_received = threading.Event()
_which: list[int] = [signal.SIGINT]
_terminals: list[int] = []  # stdout, stderr: those on a terminal when the block began
STOPPING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                 if hasattr(signal, name))  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, stopping the job as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    def __reduce__(self):  # pickled and copied by its number (its args hold the name)
        return (type(self), (self.signum,))


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_signal(signum: int, frame: Any) -> None:
    if _received.is_set() and signum != signal.SIGINT:
        # The second SIGTERM/SIGHUP: the first is being handled, or the process is stuck in
        # C code (a hung collective, a compile) where no Python handler runs: end it now.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if signum == getattr(signal, "SIGHUP", None):
        _detach_terminal()
    _which[0] = signum
    _received.set()
    raise _stop(signum)


def _detach_terminal() -> None:
    """After a hang-up, writing to the terminal fails (EIO): the stop's own lines and the
    progress bar then lost the results it was writing. Output to the terminal goes nowhere
    from now on, as under ``nohup``; files and pipes are kept."""
    for fd in _terminals:  # (a hung-up terminal is no longer one: isatty was asked before)
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


def _untouched(signum: int) -> bool:
    """Whether ``signum`` still has Python's own handling (not a caller's, not ignored:
    ``nohup`` ignores SIGHUP, and so it stays)."""
    default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    return signal.getsignal(signum) is default


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Within this block Ctrl-C raises KeyboardInterrupt as always, SIGTERM and SIGHUP raise
    :class:`Terminated`, and each is kept until the block ends, so :func:`check` raises it
    again where the first was swallowed. Off the main thread, and for a signal whose handler
    is not Python's default (a caller that handles it, an ignored SIGHUP), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [s for s in STOPPING if _untouched(s)]
    if not ours:
        yield
        return
    _received.clear()
    _terminals[:] = [fd for fd in (1, 2) if _isatty(fd)]
    hook = sys.unraisablehook

    def unprinted(unraisable: Any) -> None:
        # A stop swallowed in a finalizer printed "Exception ignored in ... Traceback ...
        # KeyboardInterrupt" in the middle of the job's own lines; `check` raises it again.
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _received.is_set()):
            hook(unraisable)

    with _blocked(ours):  # a signal between two installs waits, never half-installed
        previous = {s: signal.signal(s, _on_signal) for s in ours}
        sys.unraisablehook = unprinted
    try:
        yield
    finally:
        with _blocked(ours):  # nor raised between two restores, leaving ours behind
            for s, handler in previous.items():
                signal.signal(s, handler)
            sys.unraisablehook = hook
            _received.clear()  # a signal held back here is delivered, with the old handler


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@contextlib.contextmanager
def _blocked(signals: list[int]) -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def check() -> None:
    """Raise the stop of a signal that came within :func:`interrupts_kept`'s block."""
    if _received.is_set():
        raise _stop(_which[0])


def exit_code(stop: BaseException) -> int:
    """The command's exit code after ``stop``: 130 for Ctrl-C, 128 + N for signal N."""
    return 128 + (stop.signum if isinstance(stop, Terminated) else int(signal.SIGINT))


def stopped_by(stop: BaseException) -> str:
    """How the job was stopped, for its last line: "interrupted" or "stopped by SIGTERM"."""
    return f"stopped by {stop}" if isinstance(stop, Terminated) else "interrupted"


@contextlib.contextmanager
def ended_at_once(what: str) -> Iterator[None]:
    """While the main thread is blocked in C code (JAX's wait for the other processes of a
    run), no Python signal handler runs: Ctrl-C took effect only when the wait ended, minutes
    later. Within this block a stop signal ends the process at once with one line,
    ``kerascope: interrupted <what>``; use it only where nothing is written yet.

    Python's C handler writes each signal's number to the wakeup fd whatever the main thread
    is doing; a watcher thread reads it. Nothing changes off the main thread, off POSIX, or
    where a wakeup fd is already in use (an event loop's)."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read), os.close(write)
        yield
        return
    done = threading.Event()

    def watch() -> None:
        import select

        while not done.is_set():
            if not select.select([read], [], [], 0.2)[0]:
                continue
            for signum in os.read(read, 64):
                if signum in STOPPING and not done.is_set():
                    stop = _stop(signum)
                    sys.stderr.write(f"kerascope: {stopped_by(stop)} {what}\n")
                    sys.stderr.flush()
                    os._exit(exit_code(stop))

    watcher = threading.Thread(target=watch, daemon=True, name="kerascope-stop-watch")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        try:
            signal.set_wakeup_fd(-1)
            watcher.join()
        finally:
            os.close(read), os.close(write)
