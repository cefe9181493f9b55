"""Requests that are not HTTP a server can parse (h11 refuses them before the app runs) get the
same JSON ``{"error": ...}`` as every other error, against a real server on loopback. Before,
uvicorn answered them in plain text: ``Invalid HTTP request received.``"""

from __future__ import annotations

import json
import socket
import time

import pytest

from kerascope.serve.hosts import SECURITY_HEADERS
from tests.serve_server import server_process

pytestmark = pytest.mark.slow  # a server subprocess: ~20 s to start on 2 cores


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    from tests.test_serve_limits import slow_cam_run

    run_dir = slow_cam_run(tmp_path_factory.mktemp("tiny"), channels=8)
    with server_process("--model", str(run_dir)) as server:
        yield server.port


def exchange(port: int, data: bytes, limit: float = 5.0) -> tuple[int, dict, dict]:
    """Send raw ``data``; (status, headers, JSON body) of the answer, read until the server
    closes the connection (it must: nothing more can be read on it)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(data)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        else:
            raise AssertionError(f"connection still open after {limit} s: {got[:300]!r}")
    head, _, body = got.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    assert int(headers["content-length"]) == len(body), got[:300]
    return int(status_line.split()[1]), headers, json.loads(body)


HOST = b"Host: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request: illegal request line"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"no colon here\r\n\r\n", 400,
         "malformed HTTP request: illegal header line"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 20_000, 431,
         "request headers over this server's 16 KB"),  # incomplete: cut off by h11
        (b"POST /v1/classify HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
         b"Content-Type: image/png\r\n\r\nzz-not-a-size\r\n\r\n", 400,
         "malformed HTTP request: illegal chunk header"),
        (b"POST /v1/classify HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n", 501,
         "malformed HTTP request: Only Transfer-Encoding: chunked is supported"),
    ],
    ids=["request-line", "header-line", "long-headers", "chunked-body", "transfer-coding"],
)  # fmt: skip
def test_unparseable_requests_get_a_json_error(port, data, status, error):
    got_status, headers, body = exchange(port, data)
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["error"].startswith(error), body
    assert "Invalid HTTP request received" not in body["error"]
    for name, value in SECURITY_HEADERS:  # as every answer: these came without them
        assert headers[name.decode()] == value.decode()


def test_the_server_still_answers_after_them(port):
    """The refused connection is closed; the next one gets its answer."""
    exchange(port, b"GARBAGE\r\n\r\n")
    status, _, body = exchange(port, b"GET /healthz HTTP/1.1\r\n" + HOST +
                               b"Connection: close\r\n\r\n")  # fmt: skip
    assert status == 200 and body["status"] == "ok"
