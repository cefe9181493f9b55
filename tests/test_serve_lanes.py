"""One client's heavy requests must not stall the cheap requests of others (a security tester's
findings against `kerascope serve`), against a real server on loopback:

* a progressive-JPEG scan bomb is refused before decoding (it held the decode pool ~100 s);
* large decodes wait for a slot of the heavy lane, bounded by ``--queue-timeout-s`` (503), while
  a small classify goes past them on the light lane (the probe waited 6.5 s p50 behind 62 MP PNGs);
* the one-pass explain methods run beside classify, not in front of it (17.8 s), and in passes
  of at most 8 images, so a refused request's later passes never run;
* a cross-origin POST is refused (403) and every response carries the security headers;
* a client's long strings are quoted back shortened.
"""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.jpeg_bombs import scan_bomb
from tests.serve_server import httpx, server_process
from tests.test_serve_limits import files, slow_cam_run

real_server = pytest.mark.slow
ARGS = ("--queue-timeout-s", "3", "--max-inflight-mp", "4000", "--max-request-mp", "64")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = slow_cam_run(tmp_path_factory.mktemp("lanes"), channels=1024)  # seconds per pass
    with server_process("--model", str(run), *ARGS) as served:
        yield served


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/healthz", timeout=10).json()


def _gradcam(url: str) -> dict:
    """The served model's Grad-CAM queue, as /healthz says it."""
    (model,) = _stats(url)["models"].values()
    return model["explain"].get("gradcam", {"items": 0, "running": 0, "queued": 0})


@real_server
def test_a_scan_bomb_is_refused_at_once(server):
    bomb = scan_bomb(4000, 4000, 3000)  # before: ~25 s of decode here, then 200
    start = time.monotonic()
    r = httpx.post(f"{server.url}/v1/classify", content=bomb, timeout=120)
    assert r.status_code == 422 and "over 100 scans" in r.json()["error"], r.text[:300]
    assert time.monotonic() - start < 2


@real_server
def test_heavy_decodes_wait_in_their_lane_and_small_requests_pass(server, photo_paths):
    heavy, small = _png(8000), photo_paths["chelsea"].read_bytes()  # 64 MP of zeros: 0.2 MB
    slots = _stats(server.url)["decoding"]["heavy_slots"]
    out: list = []

    def post_heavy() -> None:
        r = httpx.post(f"{server.url}/v1/classify", content=heavy, timeout=120)
        out.append((r.status_code, r.json().get("error", "")))

    workers = [threading.Thread(target=post_heavy) for _ in range(30 * slots)]  # > 3 s of work
    for w in workers:
        w.start()
    took = []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        while any(w.is_alive() for w in workers):
            start = time.monotonic()
            assert c.post("/v1/classify", content=small).status_code == 200
            took.append(time.monotonic() - start)
            time.sleep(0.1)
    for w in workers:
        w.join()
    refused = [e for s, e in out if s == 503]
    # before: no wait was bounded (all 200, the last ones after many seconds), and the small
    # requests queued behind the large decodes
    assert refused and all("decoding large images" in e for e in refused), out
    assert {s for s, _ in out} <= {200, 503}, out
    assert np.median(took) < 1.0 and len(took) >= 3, took


@real_server
def test_explain_passes_run_beside_classify(server, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    out: dict = {}

    def explain() -> None:
        eight = files(*[(f"{i}.png", cat) for i in range(8)])
        r = httpx.post(f"{server.url}/v1/explain", files=eight, timeout=300)
        out["explain"] = (r.status_code, time.monotonic())

    with httpx.Client(base_url=server.url, timeout=120) as c:
        assert c.post("/v1/explain", content=cat).status_code == 200  # gradcam built, shape 1
        done = _gradcam(server.url)["items"]
        worker = threading.Thread(target=explain)
        worker.start()
        deadline = time.monotonic() + 120
        while _gradcam(server.url)["running"] < 8:
            assert time.monotonic() < deadline and "explain" not in out, out
            time.sleep(0.01)
        start = time.monotonic()
        assert c.post("/v1/classify", content=cat).status_code == 200
        took = time.monotonic() - start
        during = _gradcam(server.url)
        worker.join(300)
    # before: classify waited for the explain pass on the thread they shared
    assert out["explain"][0] == 200 and took < 1.5, (out, took)
    if during["running"]:  # that pass still ran (a slow machine may end it before this read)
        assert during["items"] == done and during["running"] == 8, during


@real_server
def test_an_abandoned_request_loses_its_later_passes(server, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    before = _gradcam(server.url)["items"]
    request = httpx.Request("POST", f"{server.url}/v1/explain",
                            files=files(*[(f"{i}.png", cat) for i in range(64)]))  # fmt: skip
    head = f"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head.encode() + b"\r\n" + request.read())
        deadline = time.monotonic() + 120
        while _gradcam(server.url)["running"] == 0:  # its first pass runs: hang up
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 60
    while (stats := _gradcam(server.url))["running"] or stats["queued"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)
    # before: passes of 32, and the first ran whole for a client long gone
    assert stats["items"] - before <= 16, stats


@real_server
def test_cross_origin_posts_are_refused_and_headers_set(server, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    own = f"http://127.0.0.1:{server.port}"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for origin in ("http://evil.com", "null", f"http://localhost:{server.port}"):
            r = c.post("/v1/classify", content=cat, headers={"Origin": origin})
            assert r.status_code == 403 and "cross-origin" in r.json()["error"], (origin, r.text)
        assert c.post("/v1/classify", content=cat, headers={"Origin": own}).status_code == 200
        assert c.post("/v1/classify", content=cat).status_code == 200  # curl: no Origin
        # behind a proxy that rewrites Host, the page's own name comes as X-Forwarded-Host
        page = {
            "Origin": "https://cats.example:8443",
            "X-Forwarded-Host": "cats.example:8443, inner.proxy",
        }  # the first: the page's
        assert c.post("/v1/classify", content=cat, headers=page).status_code == 200
        for path in ("/", "/v1/models", "/static/app.js"):
            h = c.get(path).headers
            assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, csp


@real_server
def test_long_client_strings_are_quoted_shortened(server, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    for query in ({"class": "x" * 15000}, {"method": "y" * 15000}, {"model": "z" * 15000}):
        r = httpx.post(f"{server.url}/v1/explain", params=query, content=cat, timeout=60)
        error = r.json()["error"]
        assert r.status_code in (400, 404) and len(error) < 400, (r.status_code, len(error))
        assert "..." in error, error


@real_server
def test_trickled_headers_cannot_keep_other_clients_out(server, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    held = []
    try:  # more half-sent requests than the server's 256 connections (slowloris)
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port), 5)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(s)
        time.sleep(0.5)
        # before: every one of these was refused (503) until the headers' deadline
        codes = [
            httpx.post(f"{server.url}/v1/classify", content=cat, timeout=30).status_code
            for _ in range(10)
        ]
    finally:
        for s in held:
            s.close()
    assert codes == [200] * 10, codes


@real_server
def test_heavy_waiters_hold_no_pixel_budget(tmp_path, photo_paths):
    """With the default in-flight budget (256 MP) and one heavy slot, four 64 MP requests
    waiting for the slot held the whole budget, so small requests got 503 "decoding 256 MP
    for other requests". Pixels are now reserved once the slot is had."""
    run = slow_cam_run(tmp_path, channels=8)
    heavy, small = _png(8000), photo_paths["chelsea"].read_bytes()
    with server_process("--model", str(run)) as served:
        assert _stats(served.url)["decoding"]["heavy_slots"] == 1  # 2 cores: one slot
        codes: list[int] = []

        def post() -> None:
            r = httpx.post(f"{served.url}/v1/classify", content=heavy, timeout=120)
            codes.append(r.status_code)

        posts = [threading.Thread(target=post) for _ in range(6)]
        for thread in posts:
            thread.start()
        answers = []
        with httpx.Client(base_url=served.url, timeout=60) as client:
            while any(thread.is_alive() for thread in posts) or not answers:
                r = client.post("/v1/classify", content=small)
                answers.append((r.status_code, r.text[:120]))
                time.sleep(0.1)
        for thread in posts:
            thread.join()
    assert codes == [200] * 6
    assert all(code == 200 for code, _ in answers), answers


def test_a_gone_clients_running_decode_keeps_its_slot(monkeypatch):
    """A client that hung up freed its heavy slot at once while its decode ran on in the
    pool, so the next heavy request got the slot and waited behind that decode in the pool,
    where no queue timeout applies. Now the slot is held until the running decode ends, and
    the next request's wait for it is bounded (503 after --queue-timeout-s)."""
    import asyncio

    import kerascope.serve.uploads as uploads
    from kerascope.serve.limits import Busy
    from kerascope.serve.pools import Lanes

    async def scenario() -> str:
        lanes = Lanes(queue_timeout=0.5, cores=2)
        monkeypatch.setattr(uploads, "_prepare", lambda *a: time.sleep(2.0))

        async def request() -> None:
            async with lanes.lane(10**9, "decoding this request") as pool:
                await uploads.decode_all([("x.png", b"")], (8, 8), pool)

        gone = asyncio.create_task(request())
        await asyncio.sleep(0.2)  # its decode is running
        gone.cancel()
        try:
            await request()
        except Busy:
            return "refused"
        finally:
            await asyncio.gather(gone, return_exceptions=True)
            lanes.shutdown()
        return "waited in the pool"

    assert asyncio.run(scenario()) == "refused"
