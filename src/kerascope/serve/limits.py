"""Request-body limits as ASGI middleware: refuse oversized bodies before they fill memory.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it arrives and refused as soon as it passes the limit. A client that stops sending for
``read_timeout`` seconds gets a 408, so a stalled upload frees its slot instead of holding it.
Both raise from inside the route's body read, so the app's exception handlers answer in JSON.
"""

from __future__ import annotations

import asyncio
import json

from kerascope.errors import KerascopeError


class BodyTooLarge(KerascopeError):
    """The body is (or is declared to be) over the server's limit: HTTP 413."""

    def __init__(self, limit: int):
        super().__init__(f"request body over the {limit / 1e6:g} MB limit of this server")
        self.limit = limit


class BodyTimeout(KerascopeError):
    """The client stopped sending its body: HTTP 408."""


class BodyLimit:
    """Pure ASGI middleware (no buffering of its own); see the module docstring."""

    def __init__(self, app, max_bytes: int, read_timeout: float = 30.0):
        self.app, self.max_bytes, self.read_timeout = app, int(max_bytes), read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await _reply(send, 413, str(BodyTooLarge(self.max_bytes)))
        seen, done = 0, False

        async def limited_receive():
            nonlocal seen, done
            if done:  # after the body: only a disconnect can come, wait for it as long as asked
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                raise BodyTimeout(
                    f"no body data for {self.read_timeout:g} s; request abandoned"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send, status: int, message: str) -> None:
    """A JSON error sent straight from the middleware; the connection is closed after it."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
