"""Starting a multi-process training run together (issue 19).

A process refused before training (an output folder that exists, a run that is locked or
finished, a bad ``--devices``) would leave the others waiting in their next collective until
JAX's heartbeat aborts them. Instead each process says on JAX's coordination service (its
key-value store, served by process 0) that it reached a step of the start ("ready") or why it
stopped (:func:`refusals_told` around ``train``), and the others read it
(:func:`start_together`) and stop at once, naming that process and its reason.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()
import keras  # noqa: E402

from kerascope.errors import KerascopeError, RunError  # noqa: E402

START_TIMEOUT = 900.0  # seconds a process waits for the others to reach a step of the start

_PHASES = ("options", "train")
_calls = 0  # train() calls in this process: every process makes the same ones, in order
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
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                if not isinstance(exc, KerascopeError):
                    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
                for phase in _PHASES:  # the steps it had not reached
                    _post(client, phase, text[:500] or "stopped")
            raise

    return told
