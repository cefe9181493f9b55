"""What one client may cost the server: body bytes and time, decoded pixels, expensive work.

``ServeLimits`` gathers every knob (the ``serve`` flags). ``BodyLimit`` is ASGI middleware that
refuses oversized bodies before they fill memory: a declared ``Content-Length`` over the limit
at once, a chunked body as soon as it passes the limit. A client that stops sending for
``read_timeout`` seconds, or has not finished its body ``body_timeout`` seconds after its
headers (a byte every 20 s never resets that clock), gets a 408 and the connection is closed.
``PixelBudget`` caps the decoded pixels of one request (413) and of all requests in flight
(503 + ``Retry-After``): the body limit alone lets a 22 KB PNG claim 179 MP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import math
import time
from collections.abc import Iterator

from kerascope.errors import KerascopeError

MP = 1_000_000


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """Every limit of a server; the defaults are the ``kerascope serve`` defaults.

    Connection limits (``keep_alive_s``, ``header_timeout_s``, ``limit_concurrency``) are
    applied by `kerascope.serve.server`; the rest by the app.
    """

    max_body_mb: float = 20.0  # one request's body
    read_timeout_s: float = 30.0  # longest pause while a body arrives
    body_timeout_s: float = 120.0  # the whole body, from the end of the headers (20 MB: 170 KB/s)
    max_request_mp: float = 64.0  # decoded (and, for explain, drawn) megapixels per request
    max_inflight_mp: float = 256.0  # the same, summed over every request in progress
    queue_timeout_s: float = 30.0  # longest wait for a model's worker before a 503
    allow_expensive: bool = False  # perturbation methods (scorecam, ablationcam) answered
    max_expensive_images: int = 1  # images per request of an expensive method
    max_expensive_inflight: int = 2  # images of expensive methods queued or running, per model
    keep_alive_s: float = 5.0  # idle time between requests on one connection
    header_timeout_s: float = 10.0  # a request's headers, from its first byte (or the connect)
    limit_concurrency: int = 256  # open connections; more are answered 503 and closed

    def check(self) -> None:
        """Raise ValueError naming the first limit that is not a finite positive number."""
        for f in dataclasses.fields(self):
            if f.name == "allow_expensive":
                continue
            name, value = f.name, getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
        if self.max_body_mb * MP > 2**53:
            raise ValueError(f"max_body_mb must be at most {2**53 / MP:g}, got {self.max_body_mb}")
        if self.max_expensive_images > self.max_expensive_inflight:  # 429 on every retry
            raise ValueError(
                f"--max-expensive-images {self.max_expensive_images} is more than "
                f"--max-expensive-inflight {self.max_expensive_inflight}, so a request of that "
                "many images could never run: raise --max-expensive-inflight or lower "
                "--max-expensive-images"
            )


class BodyTooLarge(KerascopeError):
    """The body is (or is declared to be) over the server's limit: HTTP 413."""

    def __init__(self, limit: int):
        super().__init__(f"request body over the {limit / 1e6:g} MB limit of this server")
        self.limit = limit


class BodyTimeout(KerascopeError):
    """The client stopped sending its body, or sends it too slowly: HTTP 408."""


class Busy(KerascopeError):
    """The server cannot take this request now (503, or 429 for a quota); retry later.

    ``retry_after`` (whole seconds, at least 1) goes into the ``Retry-After`` header.
    """

    def __init__(self, message: str, retry_after: float = 1.0, status: int = 503):
        super().__init__(message)
        self.retry_after = max(1, min(3600, math.ceil(retry_after)))
        self.status = status


class PixelBudget:
    """Decoded pixels per request and in flight: ``reserve`` refuses, it never waits.

    Lives on the event loop (no lock needed: nothing here awaits between check and update).
    """

    def __init__(self, per_request: float, in_flight: float):
        self.per_request, self.total = int(per_request), int(in_flight)
        self.used = 0

    @contextlib.contextmanager
    def reserve(self, pixels: int, images: int = 0) -> Iterator[None]:
        """Hold ``pixels`` for the block (of ``images`` images, for the refusal's words).

        Raises:
            PixelsTooMany: over the per-request cap (the client must send less: 413).
            Busy: the in-flight budget cannot hold it now (503 + Retry-After).
        """
        self.check_request(pixels, images)
        if self.used + pixels > self.total:
            raise Busy(
                f"the server is decoding {self.used / MP:.0f} MP for other requests (budget "
                f"{self.total / MP:g} MP); retry shortly",
                retry_after=2,
            )
        self.used += pixels
        try:
            yield
        finally:
            self.used -= pixels

    def check_request(self, pixels: int, images: int = 0) -> None:
        """`PixelsTooMany` for a request over the per-request cap: said before it waits for
        a decode slot, where `reserve` (after the slot) would say it only then."""
        if pixels > self.per_request:
            what, advice = ("this request needs", "fewer or smaller images")
            if images:
                what = "this image needs" if images == 1 else f"these {images} images need"
                advice = "a smaller image" if images == 1 else advice
            raise PixelsTooMany(
                f"{what} {_mp(pixels)} MP decoded, over the {self.per_request / MP:g} MP per "
                f"request of this server (--max-request-mp): send {advice}"
            )


class PixelsTooMany(KerascopeError):
    """One request over the per-request pixel budget: HTTP 413."""


MAX_NAME = 256
"""Longest class or method name a request may give (a folder name, a class, is at most 255
bytes); longer ones are refused unread."""

SHOWN = 80
"""Characters of a client's string quoted back in an error, at most."""


def shorten(text: str, most: int = SHOWN) -> str:
    """``text`` as an error quotes it back: printable, at most ``most`` characters + "..."."""
    from kerascope.output import clean, printable

    text = printable(clean(text))
    return text if len(text) <= most else text[:most] + "..."


MAX_HEADER_BYTES = 16 * 1024
"""A request's headers at most: an incomplete header block is cut off here by h11
(`kerascope.serve.connections`), a complete one that came in one read by `BodyLimit`."""


class BodyLimit:
    """Pure ASGI middleware (no buffering of its own); see the module docstring."""

    def __init__(
        self, app, max_bytes: int, read_timeout: float = 30.0, body_timeout: float = 120.0
    ):
        self.app, self.max_bytes = app, int(max_bytes)
        self.read_timeout, self.body_timeout = read_timeout, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or ())
        if size > MAX_HEADER_BYTES:
            return await json_reply(send, 431, f"request headers of {size:,} bytes, over this "
                                    f"server's {MAX_HEADER_BYTES // 1024} KB")  # fmt: skip
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await json_reply(send, 413, str(BodyTooLarge(self.max_bytes)))
        seen, done = 0, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout  # the whole body, however it trickles

        async def limited_receive():
            nonlocal seen, done
            if done:  # after the body: only a disconnect can come, wait for it as long as asked
                return await receive()
            left = deadline - loop.time()
            wait = min(self.read_timeout, left)
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                if wait < self.read_timeout:
                    reason = f"body not complete {self.body_timeout:g} s after the headers"
                else:
                    reason = f"no body data for {self.read_timeout:g} s"
                raise BodyTimeout(f"{reason}; request abandoned") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                done = not message.get("more_body", False)
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except asyncio.CancelledError as exc:  # a stopping server cancels what outlived its grace
            if started or "shutdown" not in " ".join(map(str, exc.args)):  # any other: as it was
                raise
            # Answered here, not re-raised: uvicorn sent a plain-text 500 and logged a
            # traceback per request (the client did nothing wrong)
            await json_reply(send, 503, "the server stopped before this request was "
                             "answered; send it again when it is back")  # fmt: skip


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def json_reply(send, status: int, message: str) -> None:
    """A JSON error sent straight from the middleware; the connection is closed after it."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_FD_ERRORS = (errno.EMFILE, errno.ENFILE)


class DescriptorLog(logging.Filter):
    """ "Too many open files" once a minute with a count, never once per accept or request.

    Installed as the event loop's exception handler (asyncio reports a failed ``accept``
    there, with a traceback, each time it retries) and as a filter on the loggers that log
    request failures. Other errors pass through unchanged.
    """

    def __init__(self, every_s: float = 60.0):
        super().__init__()
        self.every_s, self.last, self.hidden = every_s, -math.inf, 0
        self.logger = logging.getLogger("uvicorn.error")

    def _first_in_a_while(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.hidden += 1
            return False
        self.last = now
        return True

    def _note(self, exc: OSError) -> None:
        hidden, self.hidden = self.hidden, 0
        self.logger.error(
            "file descriptor table full (%s): connections and uploads fail until some close; "
            "lower --limit-concurrency or raise `ulimit -n` (%d more such errors not logged)",
            exc.strerror or exc, hidden,
        )  # fmt: skip

    def handle(self, loop, context: dict) -> None:
        """An ``asyncio`` exception handler."""
        exc = context.get("exception")
        if not is_descriptor_error(exc):
            loop.default_exception_handler(context)
        elif self._first_in_a_while():
            self._note(exc)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not is_descriptor_error(exc):
            return True
        if self._first_in_a_while():
            self._note(exc)
        return False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle ``loop``'s exceptions and filter the request-failure loggers."""
        loop.set_exception_handler(self.handle)
        for name in ("asyncio", "uvicorn.error"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, DescriptorLog) for f in logger.filters):
                logger.addFilter(self)


def is_descriptor_error(exc: BaseException | None) -> bool:
    """EMFILE/ENFILE, also when wrapped (``raise ... from``) by the code that met it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FD_ERRORS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _mp(pixels: int) -> str:
    """Megapixels to one decimal, or two significant digits under 1 (0.135 MP read "0.1 MP,
    over the 0.1 MP")."""
    mp = pixels / MP
    return f"{mp:.1f}" if mp >= 1 else f"{mp:.2g}"
