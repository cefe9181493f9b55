"""Bind the socket, then run uvicorn on it, with the connection limits of `ServeLimits`.

The socket is bound here, not by uvicorn, so a port in use is one clear error line (uvicorn
logs and exits) and ``--port 0`` can report the port the system chose. Connections get the
deadlines and the cap of `kerascope.serve.connections`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence

from kerascope.errors import KerascopeError
from kerascope.extras import install_command
from kerascope.serve.hosts import is_loopback
from kerascope.serve.limits import MAX_HEADER_BYTES, ServeLimits


class ServeError(KerascopeError, OSError):
    """The server cannot start (address in use, missing extra); the message says why."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ServeError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def run_server(
    models: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_body_mb: float = 20.0,
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
    limits: ServeLimits | None = None,
    precision: str | None = None,
    exit_on_stop: bool = False,
    warm: bool | str | Sequence[str] = True,
) -> None:
    """Load ``models`` (the first is the default), then serve until interrupted.

    ``limits``: every limit (default: `ServeLimits` with ``max_body_mb``). ``precision``: what
    the models compute in (auto, float32, bfloat16, float16; see `load_served`).
    ``exit_on_stop``: end the process at once when it stops while a model pass still runs
    (the command's choice; a program that calls this keeps its process, and waits).
    ``warm``: what each model builds and compiles before the server answers (`load_served`).

    Raises:
        ServeError: the ``serve`` extra is missing or the address cannot be used.
        KerascopeError: a model cannot be loaded.
    """
    say = announce or (lambda line: print(f"kerascope: {line}", file=sys.stderr, flush=True))
    limits = limits or ServeLimits(max_body_mb=max_body_mb)
    try:
        limits.check()
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    try:
        import uvicorn

        from kerascope.serve.app import create_app
        from kerascope.serve.connections import (
            ACCEPT_BATCH,
            connection_cap,
            guarded_protocol,
            server_class,
        )
    except ImportError as exc:
        raise ServeError(
            f"kerascope serve needs {exc.name or 'fastapi and uvicorn'}: {install_command('serve')}"
        ) from None
    from kerascope.serve.served import load_served

    sock = bind(host, port)  # first: a port in use fails before minutes of model loading
    try:
        say(f"loading {', '.join(models)}")
        served = load_served(models, max_batch, max_wait_ms, warm=warm, limits=limits,
                             precision=precision, announce=say)  # fmt: skip
        app = create_app(served, limits=limits, loopback=is_loopback(host))
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        engines = ", ".join(f"{k} ({m.engine}, {m.precision})" for k, m in served.items())
        cap = connection_cap(limits)
        if cap < limits.limit_concurrency:
            say(f"at most {cap} connections, not {limits.limit_concurrency}: this process may "
                "open few files (raise `ulimit -n`)")  # fmt: skip
        say(f"serving {engines} on http://{shown}:{bound_port}/ (Ctrl-C stops)")
        config = uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            http=guarded_protocol(limits, cap),
            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  (a float works)
            limit_concurrency=cap + 1,  # uvicorn's 503 per request: a backstop to the cap
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            backlog=ACCEPT_BATCH,
        )
        try:
            server_class()(config).run(sockets=[sock])
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM (uvicorn raises it again at its end)
            if exit_on_stop:
                _leave_running_passes(served, say, stop)
            raise
        if exit_on_stop:
            _leave_running_passes(served, say)
    finally:
        sock.close()


def _leave_running_passes(served: dict, say: Callable[[str], None],
                          stop: KeyboardInterrupt | None = None) -> None:  # fmt: skip
    """End the process now if a model pass still runs in a worker thread: Python would wait
    for it at exit (an explain pass of minutes held a stopped server that long). No answer
    is lost: uvicorn has closed every connection; nothing is written to disk."""
    if not any(m.running for m in served.values()):
        return
    from kerascope.interrupts import exit_code, stopped_by

    said = stopped_by(stop) if stop is not None else "stopped"
    say(f"{said}; a model pass still running is not waited for")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code(stop) if stop is not None else 0)
