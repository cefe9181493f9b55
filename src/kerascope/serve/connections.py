"""Connection deadlines and the connection cap, on top of uvicorn's h11 protocol.

uvicorn closes a connection that idles *after* a response (``timeout_keep_alive``), but not one
that never sends anything, sends its headers a byte at a time, or trickles its body: each byte
resets the only timer. So every connection here has one deadline at a time:

* a new connection, and a kept-alive one from the first byte of its next request, must deliver
  complete headers within ``header_timeout_s`` (at most 16 KB of them: h11's limit, set
  explicitly);
* a body must be complete ``body_timeout_s`` after its headers (the app answers 408 then; this
  closes what the app did not read, a moment later);
* between requests, uvicorn's keep-alive timer (``keep_alive_s``).

Connections over ``max_connections`` are answered 503 and closed at once, so a flood of idle
sockets cannot use up the process's file descriptors (where every accept would fail); but first
the connection that has waited longest for its headers is closed to make room, so a client that
holds hundreds of connections open with trickled headers (slowloris) loses its own, not others'.
asyncio accepts up to uvicorn's ``backlog`` connections in one go before any of them reaches
``connection_made`` (two loop turns later), so that batch is kept small (`ACCEPT_BATCH`; the
kernel's queue is set back to `LISTEN_BACKLOG` after startup) and `FD_RESERVE` covers three.

Bytes h11 cannot parse (a garbage request line, a bad header line, headers over the limit, a
broken chunked body) get a JSON ``{"error": ...}`` like every other error, where uvicorn sent
plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kerascope.serve.hosts import SECURITY_HEADERS
from kerascope.serve.limits import MAX_HEADER_BYTES, ServeLimits

BODY_GRACE_S = 2.0  # after the app's own 408, before the socket is closed under it
ACCEPT_BATCH = 16  # connections asyncio accepts per loop turn (uvicorn's `backlog`)
LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted
FD_RESERVE = 64  # free descriptors: 3 accept batches, and temp files of multipart bodies, logs
log = logging.getLogger("uvicorn.error")


def descriptor_room() -> int:
    """Descriptors this process may still open: the soft limit (raised to the hard limit
    first, as servers do) minus those open now."""
    try:
        import resource
    except ImportError:  # not a POSIX system: no such limit to stay under
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    return max(0, soft - used)


def connection_cap(limits: ServeLimits) -> int:
    """``limits.limit_concurrency``, lowered so that many connections still leave
    `FD_RESERVE` descriptors free (at least 1)."""
    return max(1, min(limits.limit_concurrency, descriptor_room() - FD_RESERVE))


def guarded_protocol(limits: ServeLimits, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the deadlines and the cap of the module docstring."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _phase: object = None  # the h11 state the deadline was armed for
        _opened = 0.0  # loop time of connection_made
        refused_connections = 0

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = self.loop.time()
            if len(self.connections) > max_connections and not self._evict_a_slow_one():
                _refuse(transport, max_connections)
                return
            self._arm(h11.IDLE, limits.header_timeout_s)

        def _evict_a_slow_one(self) -> bool:
            """Close the connection that has waited longest for its headers (over the cap, a
            slowloris client's trickled headers would otherwise keep every new client out:
            45 of 135 requests failed beside 300 such connections); False if none waits."""
            waiting = [c for c in self.connections if c is not self
                       and getattr(c, "_phase", None) is h11.IDLE
                       and c.conn.their_state is h11.IDLE]  # fmt: skip
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c._opened)
            oldest._disarm()
            oldest.transport.close()
            _REFUSED["evicted"] += 1
            _note_limit(max_connections)
            return True

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._deadline is None:
                self._arm(h11.IDLE, limits.header_timeout_s)  # the next request has begun
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms the keep-alive timer; may start a new cycle
            if self.conn.their_state is not h11.IDLE:
                self._follow()
            elif self._phase is not h11.IDLE:
                self._disarm()  # idle now: keep-alive's turn, until the next byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Move the deadline along with the client's side of the exchange."""
            state = self.conn.their_state
            if state is h11.IDLE:
                return  # headers still coming: their deadline stands
            if state is h11.SEND_BODY:
                if self._phase is not h11.SEND_BODY:
                    self._arm(h11.SEND_BODY, limits.body_timeout_s + BODY_GRACE_S)
                return
            self._disarm()  # the request is in (or the connection is ending)

        def _arm(self, phase, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._phase = None, None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to bytes h11 cannot parse, as JSON like every other error
            (it was plain text); called while h11's error is being handled."""
            _malformed(self, sys.exception())

    return GuardedH11Protocol


def _malformed(protocol: H11Protocol, exc: BaseException | None) -> None:
    """h11's status for ``exc`` (400; 431 for headers over its limit, 501 for a transfer coding
    it lacks) with a JSON body and `SECURITY_HEADERS`, then close. Just close when a response
    has already begun on this connection: h11 refuses to start another."""
    status = getattr(exc, "error_status_hint", 400)
    known = (
        isinstance(status, int) and 400 <= status < 600 and status in HTTPStatus._value2member_map_
    )
    status = status if known else 400
    if status == 431:
        message = f"request headers over this server's {MAX_HEADER_BYTES // 1024} KB"
    else:
        detail = str(exc)[:200] if isinstance(exc, h11.ProtocolError) else ""
        message = "malformed HTTP request" + (f": {detail}" if detail else "")
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
               *SECURITY_HEADERS]  # fmt: skip
    try:
        event = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        data = protocol.conn.send(event) or b""
        data += protocol.conn.send(h11.Data(data=body)) or b""
        data += protocol.conn.send(h11.EndOfMessage()) or b""
        protocol.transport.write(data)
    except (h11.LocalProtocolError, ValueError):  # mid-response; or a status without a phrase
        pass
    protocol.transport.close()


_REFUSED = {"count": 0, "logged": False, "evicted": 0}


def _refuse(transport, limit: int) -> None:
    """503 + Retry-After (and `SECURITY_HEADERS`, as every answer) straight onto a connection
    over the cap, then close it."""
    body = json.dumps(
        {"error": f"the server holds {limit} connections, its limit; retry shortly"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n"
    ).encode()
    security = b"".join(k + b": " + v + b"\r\n" for k, v in SECURITY_HEADERS)
    transport.write(head + security + b"\r\n" + body)
    transport.close()
    _REFUSED["count"] += 1
    _note_limit(limit)


def _note_limit(limit: int) -> None:
    if not _REFUSED["logged"]:  # once: a flood must not become a flood of log lines
        _REFUSED["logged"] = True
        log.warning("connection limit %d reached: closing the connections that wait longest "
                    "for their headers, or refusing new ones with 503", limit)  # fmt: skip


def server_class():
    """uvicorn's Server, with the kernel's listen queue set back to `LISTEN_BACKLOG` once the
    sockets serve (uvicorn's ``backlog``, `ACCEPT_BATCH`, is then only asyncio's batch)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            for sock in sockets or ():
                sock.listen(LISTEN_BACKLOG)

    return Server
