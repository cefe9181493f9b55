"""Starting a multi-process training run together, and stopping it together (issue 19).

A process refused before training (an output folder that exists, a run that is locked or
finished, a bad ``--devices``) would leave the others waiting in their next collective until
JAX's heartbeat aborts them. Instead each process says on JAX's coordination service (its
key-value store, served by process 0) that it reached a step of the start ("ready") or why it
stopped (:func:`refusals_told` around ``train``), and the others read it
(:func:`start_together`) and stop at once, naming that process and its reason.

The same holds once training runs. A process that fails in an epoch (an image in its shard
that no longer decodes, a full disk, an out-of-memory error) posts its reason
(:func:`tell_failure`) and leaves without JAX's shutdown barrier; every other process watches
the store from a thread (:class:`PeerWatch`, a read every half second) and acknowledges, so
the failing process, which may be process 0 and so the store itself, waits for that before
it goes. A process other than 0 (it writes nothing but a scratch copy) then prints one line
naming the failed process and its reason, and ends. Process 0, the run directory's writer,
leaves through its main thread: its collective fails at once (the failing process's
connections are gone) and ``devices.peers_watched`` turns that into the same line; if its
main thread is not back within :data:`GRACE` seconds, it prints the line and ends too. (A
process other than 0 that waited for its collective instead would outlive process 0's
store when process 0 failed, and JAX's client aborts a process whose store is gone.)
Before, a failing process waited at JAX's shutdown barrier for peers that waited in their
collective for it, until JAX's timeouts aborted all of them with a C++ trace.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()
import keras  # noqa: E402

from kerascope.errors import KerascopeError, RunError  # noqa: E402

START_TIMEOUT = 900.0  # seconds a process waits for the others to reach a step of the start
POLL = 0.5  # seconds between two reads of the failures posted by other processes
GRACE = 10.0  # seconds a process told of a peer's failure waits for its own collective to fail
ACK_TIMEOUT = 5.0  # seconds a failing process waits for the others to have read its reason

_PHASES = ("options", "data", "train")  # the steps of the start, in order (start_together)
_calls = 0  # train() calls in this process: every process makes the same ones, in order
_training = 0  # the call whose processes all reached the start of training (0: none yet)
_posted: set[str] = set()


def _client() -> Any:
    """JAX's distributed client in a multi-process run, else None."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return None
    from jax._src import distributed

    client = getattr(distributed.global_state, "client", None)  # private: checked, not assumed
    needs = ("key_value_set", "blocking_key_value_get")
    return client if all(hasattr(client, name) for name in needs) else None


def _key(phase: str, process: int) -> str:
    return f"kerascope/train{_calls}/{phase}/{process}"


def _post(client: Any, phase: str, value: str) -> None:
    import jax

    key = _key(phase, jax.process_index())
    if key not in _posted:
        _posted.add(key)
        with contextlib.suppress(Exception):  # the coordinator may be gone: nothing to tell
            client.key_value_set(key, value)


def start_together(phase: str, timeout: float = START_TIMEOUT) -> None:
    """Say this process reached ``phase`` and wait for the others: the first that stopped
    before it ends this process too, in one line naming that process and its reason."""
    client = _client()
    if client is None:
        return
    import jax

    pid, count = jax.process_index(), jax.process_count()
    _post(client, phase, "ready")
    for other in range(count):
        if other == pid:
            continue
        try:
            value = client.blocking_key_value_get(_key(phase, other), int(timeout * 1000))
        except Exception as exc:  # the coordinator (process 0) gone, or the wait timed out
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RunError(f"process {pid} of {count}: process {other} did not reach the start "
                           f"of training ({first[:200]}); start every process again with the "
                           "same options") from None  # fmt: skip
        if value != "ready":
            raise RunError(f"process {pid} of {count}: process {other} stopped before "
                           f"training: {value}")  # fmt: skip
    if phase == "train":
        global _training
        _training = _calls


def training_started() -> bool:
    """Whether every process of this ``train`` call reached the start of training (from then
    on a failure is told with :func:`tell_failure`, before it by :func:`refusals_told`)."""
    return _client() is not None and _training == _calls


def refusals_told(train: Callable[..., Any]) -> Callable[..., Any]:
    """``train`` that, in a multi-process run, tells the other processes why it stopped
    before training (:func:`start_together` reads it), so they stop within a second."""

    @functools.wraps(train)
    def told(*args: Any, **kwargs: Any) -> Any:
        global _calls
        _calls += 1
        try:
            return train(*args, **kwargs)
        except BaseException as exc:
            client = _client()
            if client is not None:
                for phase in _PHASES:  # the steps it had not reached
                    _post(client, phase, reason_of(exc))
            raise

    return told


def reason_of(exc: BaseException) -> str:
    """One line for an exception: a kerascope error's message, else its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, KerascopeError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:500] or "stopped"


def tell_failure(reason: str) -> None:
    """Post why this process stops in training, then wait (at most :data:`ACK_TIMEOUT` s) until
    every other process has read it: the store lives in process 0 and ends with it."""
    client = _client()
    if client is None:
        return
    import jax

    pid, count = jax.process_index(), jax.process_count()
    _post(client, "failed", reason)
    deadline = time.monotonic() + ACK_TIMEOUT
    for other in range(count):
        left = deadline - time.monotonic()
        if other == pid or left <= 0:
            continue
        with contextlib.suppress(Exception):  # a peer already gone: nothing more to wait for
            client.blocking_key_value_get(_seen_key(pid, other), max(1, int(left * 1000)))
    if pid == 0:  # the store ends with this process: let the others leave first
        time.sleep(2 * POLL)


def _seen_key(failed: int, reader: int) -> str:
    return f"kerascope/train{_calls}/seen/{failed}/{reader}"


class PeerWatch:
    """Reads, every :data:`POLL` seconds, whether another process posted a failure: then
    :attr:`failed` is ``(process, reason)`` and the read is acknowledged. A process other
    than 0 then prints :meth:`message`, calls ``cleanup`` (its scratch copy) and ends (exit
    code 2); process 0 does so only if :meth:`stop` is not called within :data:`GRACE`
    seconds (its main thread's collective failed and it is on its way out)."""

    def __init__(self, run_dir: Any, cleanup: Callable[[], None] | None = None):
        import jax

        self.run_dir, self.cleanup = run_dir, cleanup
        self.pid, self.count = jax.process_index(), jax.process_count()
        self.failed: tuple[int, str] | None = None
        self._stopped = threading.Event()
        self._seen = threading.Event()
        self._client = _client()
        self._prefix = f"kerascope/train{_calls}/failed/"
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="kerascope-peers")  # fmt: skip
        if self._client is not None:
            self._thread.start()

    def message(self) -> str:
        other, reason = self.failed or (-1, "")
        return (f"process {self.pid} of {self.count}: process {other} stopped during training: "
                f"{reason}; start every process again with `--resume {self.run_dir}`")  # fmt: skip

    def wait(self, seconds: float) -> tuple[int, str] | None:
        """The failure another process posted, waiting up to ``seconds`` for one."""
        self._seen.wait(seconds if self._thread.is_alive() else 0)
        return self.failed

    def stop(self) -> None:
        self._stopped.set()

    def _read(self) -> bool:
        try:
            entries = self._client.key_value_dir_get(self._prefix)
        except Exception:  # the store (process 0) is gone: the collectives say so
            return False
        others = sorted((int(key.rsplit("/", 1)[-1]), value) for key, value in entries
                        if key.rsplit("/", 1)[-1] != str(self.pid))  # fmt: skip
        if others:
            self.failed = others[0]
            with contextlib.suppress(Exception):
                self._client.key_value_set(_seen_key(self.failed[0], self.pid), "1")
            self._seen.set()
        return True

    def _watch(self) -> None:
        while not self._stopped.wait(POLL):
            if not self._read():
                return
            if self.failed is not None:
                break
        if self.failed is None or (self.pid == 0 and self._stopped.wait(GRACE)):
            return
        sys.stdout.flush()
        sys.stderr.write(f"kerascope: error: {self.message()}\n")
        sys.stderr.flush()
        if self.cleanup is not None:
            with contextlib.suppress(Exception):
                self.cleanup()
        os._exit(2)  # the main thread waits in a collective, where no exception reaches it


@contextlib.contextmanager
def peers_watched(run_dir: Any, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Training in a multi-process run, where a stop is one line in every process, never a
    hang (:mod:`kerascope.training.starting`). This process failing: it tells the others
    its reason, raises as alone, and leaves without JAX's shutdown barrier. Another process
    failing or dying: this one's next collective fails (gloo: "connection reset by peer",
    within seconds), which becomes one line naming that process and its reason when it told
    one, and saying how to continue; the process then ends with exit code 2 as soon as Python
    exits (:func:`_exit_without_jax_shutdown`)."""
    multi = keras.backend.backend() == "jax" and _process_count() > 1
    watch = PeerWatch(run_dir, cleanup) if multi else None
    try:
        yield
    except KeyboardInterrupt as stop:  # Ctrl-C in this process alone (its last epoch saved)
        if watch is not None and training_started():
            import atexit

            from kerascope.interrupts import exit_code, stopped_by

            atexit.register(_exit_without_jax_shutdown, exit_code(stop))  # the CLI's code
            how = stopped_by(stop)
            tell_failure("interrupted (Ctrl-C)" if how == "interrupted" else how)
        raise
    except Exception as exc:
        if watch is None or not training_started():
            raise  # a stop before training is told by starting.refusals_told
        import atexit

        import jax

        atexit.register(_exit_without_jax_shutdown)
        if isinstance(exc, KerascopeError):  # this process's own (a peer's gives no such error)
            tell_failure(reason_of(exc))
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        told = watch.wait(2 * POLL + 1)  # a peer that failed has said why by now
        if told is None and not _peer_gone(first):
            tell_failure(reason_of(exc))  # its own failure (out of memory, a bug)
            raise
        if told is not None:
            raise RunError(watch.message()) from exc
        raise RunError(f"process {jax.process_index()} of {jax.process_count()}: another "
                       f"process of the run stopped ({first[:200]}); start every process "
                       f"again with `--resume {run_dir}` (process 0's last saved epoch "
                       "continues)") from exc  # fmt: skip
    finally:
        if watch is not None:
            watch.stop()


def _process_count() -> int:
    import jax

    return jax.process_count()


def _peer_gone(message: str) -> bool:
    """Whether a runtime error is a collective that lost a peer (gloo's connection closed or
    reset), not this process's own failure (out of memory, a bug)."""
    text = message.lower()
    return any(word in text for word in ("gloo", "connection", "peer", "socket", "unavailable"))


def _exit_without_jax_shutdown(code: int = 2) -> None:
    """At exit after a stop in training: leave now with the CLI's code (2 for an error, 130
    for Ctrl-C). JAX's client would otherwise wait at its shutdown barrier for processes that
    are gone or waiting in a collective, until its timeouts (100 s heartbeat, 300 s shutdown)
    abort it with a C++ stack trace (exit 134) after our one line."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
