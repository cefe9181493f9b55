"""Which ``Host`` a server on a loopback address answers: its own names only.

A web page on any site can make the browser send requests to ``http://127.0.0.1:8000`` under
its own name (DNS rebinding: ``evil.example`` resolves to 127.0.0.1 after the page loads), and
then read the answers, since to the browser they come from the page's own origin. The request
then carries ``Host: evil.example:8000``; a loopback server refuses every name but localhost,
127.0.0.1 and ::1 (400, JSON). A server bound to another address was put there to be reached
by other names, and answers them all.
"""

from __future__ import annotations

import ipaddress

from kerascope.serve.limits import json_reply


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address, or a name from a ``Host`` header) is this machine
    only: ``localhost`` or a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.1). A name
    that merely starts with "127." (``127.attacker.example``) is anybody's."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def quoted(header: str) -> str:
    """A client's header value as an error quotes it: escaped, at most 100 characters."""
    return repr(header.encode("unicode_escape").decode()[:100])


class LoopbackHosts:
    """Pure ASGI middleware: a request whose ``Host`` is not a loopback name gets a 400."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"host")
            given = None if header is None else header.decode("latin-1")
            # No Host at all (HTTP/1.0, a health check) is no browser's: nothing to rebind.
            if given is not None and not is_loopback(host_name(given)):
                return await json_reply(
                    send, 400,
                    f"Host {quoted(given)} is not this server's name: a server on a loopback "
                    "address answers localhost, 127.0.0.1 and [::1] only (a page of another "
                    "site must not reach it by DNS rebinding); start it with --host 0.0.0.0 to "
                    "be reached by other names",
                )  # fmt: skip
        return await self.app(scope, receive, send)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # The page's own script, style and icons; photos the user picks (blob:) and the heatmaps the
    # API returns (data:); requests to this server only; never inside another site's frame.
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
]


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a request's ``Origin`` is the server's own (scheme, name and port as the
    ``Host`` the browser sent): the page this server serves, not another site's."""
    if host is None or "://" not in origin:
        return False
    scheme, _, rest = origin.partition("://")
    return scheme.lower() in ("http", "https") and rest.lower() == host.strip().lower()


class SecurityHeaders:
    """Pure ASGI middleware: every response gets `SECURITY_HEADERS` (those it lacks). It wraps
    the whole app, its error handling and the other middleware included (`create_app`), so
    refusals sent before any route runs carry them too; `kerascope.serve.connections` adds
    them to the answers it writes itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers") or ()}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
            await send(message)

        return await self.app(scope, receive, with_headers)


class BrowserGuard:
    """Pure ASGI middleware: a cross-origin POST (an ``Origin`` other than the server's own:
    another site's page, or ``null``) gets a 403 before its body is read, since any site the
    user visits could make their browser send a form of photos here; clients that send no
    ``Origin`` (curl, scripts) and the server's own page are answered."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if scope.get("method", "GET") not in SAFE_METHODS and origin is not None:
            given = origin.decode("latin-1")
            # A reverse proxy names the page's host in X-Forwarded-Host (the first, nearest
            # the browser, of a list), which another site's page cannot set without a
            # preflight this server never grants.
            forwarded = (headers.get(b"x-forwarded-host") or b"").split(b",")[0].strip()
            names = [h.decode("latin-1") for h in (headers.get(b"host"), forwarded) if h]
            if not any(same_origin(given, name) for name in names):
                return await json_reply(
                    send, 403,
                    f"cross-origin request from {quoted(given)} refused: this server answers "
                    "its own page and clients that send no Origin (curl, scripts); behind a "
                    "reverse proxy, name the page's host (nginx: proxy_set_header "
                    "X-Forwarded-Host $http_host)",
                )  # fmt: skip
        return await self.app(scope, receive, send)
