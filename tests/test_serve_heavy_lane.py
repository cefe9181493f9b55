"""The heavy decode lane's queue (`kerascope.serve.pools`): who keeps a place in it.

* a request whose client hung up while it waited kept its place, took its turn and decoded for
  nobody (and on Python 3.11 a cancellation in the loop turn the slot was handed over was
  swallowed by ``asyncio.wait_for``);
* explain took a slot twice, to decode and to draw, so it could be refused (503) at drawing
  after its model pass had run;
* an upload's JPEG scans were counted twice: to weigh it, and again in the decode's scan-bomb
  check (three times for a large JPEG explain decodes twice), ~3.5 ms per 12 MP photo each.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.serve_server import httpx, server_process
from tests.test_serve_limits import files, slow_cam_run

ARGS = ("--max-request-mp", "600", "--max-inflight-mp", "8000")
HEAVY = 8000 * 8000  # pixels of one heavy PNG (below): about a second to decode here


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return slow_cam_run(tmp_path_factory.mktemp("heavy"), channels=8)


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture(scope="module")
def heavy() -> bytes:
    """A 64 MP PNG of zeros: 0.8 MB, about a second to decode."""
    return _png(8000)


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/healthz", timeout=10).json()


def _until(url: str, test, limit: float = 60.0) -> dict:
    """/healthz's ``decoding`` once ``test`` of it holds (polled); fails after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not test(lane := _stats(url)["decoding"]):
        assert time.monotonic() < deadline, lane
        time.sleep(0.02)
    return lane


def _poster(url: str, path: str, images: list[bytes], out: list) -> threading.Thread:
    def post() -> None:
        named = files(*[(f"{i}.png", data) for i, data in enumerate(images)])
        r = httpx.post(f"{url}{path}", files=named, timeout=300)
        out.append((r.status_code, r.text[:200]))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def _gradcam_items(url: str) -> int:
    (model,) = _stats(url)["models"].values()
    return model["explain"].get("gradcam", {"items": 0})["items"]


@pytest.mark.slow
def test_a_waiter_whose_client_hung_up_leaves_the_queue(run_dir, heavy):
    with server_process("--model", str(run_dir), *ARGS, "--queue-timeout-s", "60") as server:
        _a_waiter_gone(server, heavy)


def _a_waiter_gone(server, heavy: bytes) -> None:
    slots = _stats(server.url)["decoding"]["heavy_slots"]
    out: list = []
    holders = [_poster(server.url, "/v1/classify", [heavy] * 5, out) for _ in range(slots)]
    _until(server.url, lambda lane: lane["heavy_running"] == slots)
    gone = _png(7000)  # 49 MP: pixels in flight say whether it was ever decoded
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: image/png\r\nContent-Length: {len(gone)}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head.encode() + gone)
        _until(server.url, lambda lane: lane["heavy_waiting"] == 1)
    hung_up = time.monotonic()
    lane = _until(server.url, lambda lane: lane["heavy_waiting"] == 0)
    left_after = time.monotonic() - hung_up
    after = _poster(server.url, "/v1/classify", [heavy], out)  # the next: it gets the slot
    in_flight = set()
    while any(t.is_alive() for t in [*holders, after]):
        in_flight.add(_stats(server.url)["pixels_in_flight"])
        time.sleep(0.02)
    # before: it kept its place through the holders' decodes (~5 s), then took the slot
    assert left_after < 3.0 and lane["heavy_running"] == slots, (left_after, lane)
    assert all(pixels % HEAVY == 0 for pixels in in_flight), sorted(in_flight)
    assert [code for code, _ in out] == [200] * (slots + 1), out
    assert _until(server.url, lambda lane: lane["heavy_running"] == 0)["heavy_waiting"] == 0


@pytest.mark.slow
def test_explain_is_not_refused_at_drawing_after_its_model_pass(run_dir, heavy, photo_paths):
    with server_process("--model", str(run_dir), *ARGS, "--queue-timeout-s", "3") as server:
        _drawing_after_the_pass(server, heavy, photo_paths["chelsea"].read_bytes())


def _drawing_after_the_pass(server, heavy: bytes, cat: bytes) -> None:
    assert httpx.post(f"{server.url}/v1/explain", content=cat, timeout=300).status_code == 200
    slots = _stats(server.url)["decoding"]["heavy_slots"]
    passes = _gradcam_items(server.url)
    explained: list = []
    explain = _poster(server.url, "/v1/explain", [heavy], explained)
    _until(server.url, lambda lane: lane["heavy_running"] >= 1)  # it decodes
    out: list = []  # these take every slot as it frees, one more waits: explain draws after
    decoders = [_poster(server.url, "/v1/classify", [heavy] * 6, out) for _ in range(slots + 1)]
    for thread in [explain, *decoders]:
        thread.join(300)
    # before: 503 "... before drawing this request's pictures", after its model pass had run
    assert explained and explained[0][0] == 200, explained
    assert _gradcam_items(server.url) == passes + 1
    codes = [code for code, _ in out]  # the first took the slot explain's decode left
    assert set(codes) <= {200, 503} and 200 in codes, out


def test_a_waiter_cancelled_as_it_is_handed_the_slot_gives_it_on():
    """On Python 3.11 ``asyncio.wait_for`` swallowed the cancellation (the request went on
    with the slot); now the slot goes to the next waiter."""
    from kerascope.serve.pools import HeavyGate

    async def scenario() -> tuple[list[str], bool, int]:
        gate, ran, go = HeavyGate(1, timeout=30), [], asyncio.Event()

        async def use(name: str) -> None:
            async with gate.slot("decoding"):
                ran.append(name)
                if name == "first":
                    await go.wait()
            if name == "first":
                cancelled.cancel()  # the same loop turn the slot is handed to it

        first = asyncio.create_task(use("first"))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(use("cancelled"))
        third = asyncio.create_task(use("third"))
        await asyncio.sleep(0)  # both wait behind the first
        go.set()
        await asyncio.gather(first, third)
        await asyncio.gather(cancelled, return_exceptions=True)
        return ran, cancelled.cancelled(), gate.held

    ran, cancelled, held = asyncio.run(scenario())
    assert ran == ["first", "third"] and cancelled and held == 0, (ran, cancelled, held)


def test_drawing_goes_first_and_waits_past_the_timeout():
    """A request resuming after its model pass goes before those still to decode and is
    never refused; those still waiting at their deadline are (503)."""
    from kerascope.serve.limits import Busy
    from kerascope.serve.pools import HeavyGate

    async def scenario() -> list[str]:
        gate, order = HeavyGate(1, timeout=0.2), []

        async def use(name: str, hold: float, resume: bool = False) -> None:
            try:
                async with gate.slot("decoding", resume=resume):
                    order.append(name)
                    await asyncio.sleep(hold)
            except Busy:
                order.append(f"{name} refused")

        first = asyncio.create_task(use("decode", 0.5))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(use("new", 0)), asyncio.create_task(use("draw", 0, True))]
        await asyncio.gather(first, *rest)
        assert gate.held == 0 and gate.queued == 0
        return order

    assert asyncio.run(scenario()) == ["decode", "new refused", "draw"]


def test_each_uploads_scans_are_counted_once(monkeypatch, photo_paths):
    """Weighing counts a JPEG's scans; its decodes (two for a large JPEG explained) use that
    count, so the markers are walked once per upload, and a scan bomb is still refused."""
    from concurrent.futures import ThreadPoolExecutor

    import kerascope.images.jpeg as jpeg
    import kerascope.serve.decode as serve_decode
    from kerascope.serve.uploads import decode_all, weigh
    from tests.jpeg_bombs import scan_bomb

    photo = Image.open(photo_paths["chelsea"]).convert("RGB").resize((2400, 1800))
    progressive = io.BytesIO()
    photo.save(progressive, "JPEG", quality=90, progressive=True)
    uploads = [("cat.jpg", progressive.getvalue()), ("bomb.jpg", scan_bomb(640, 480, 400))]
    counted: list[int] = []
    real = jpeg.count_scans

    def counting(data, most=jpeg.MAX_SCANS):
        counted.append(len(data))
        return real(data, most)

    monkeypatch.setattr(jpeg, "count_scans", counting)
    monkeypatch.setattr(serve_decode, "count_scans", counting)
    with ThreadPoolExecutor(2) as pool:
        for keep in (False, True):  # classify, then explain (decoded twice: `Weighed.again`)
            counted.clear()
            weighed = weigh(uploads, (224, 224), keep, 1024)
            assert weighed.again == (keep, False)
            items = asyncio.run(decode_all(uploads, (224, 224), pool, keep, None, 1024, weighed))
            # before: 2 counts per upload for classify, 3 for the photo explain decodes twice
            assert sorted(counted) == sorted(len(data) for _, data in uploads), (keep, counted)
            assert items[0].error is None and items[0].pixels.shape == (224, 224, 3)
            assert "over 100 scans" in items[1].error and items[1].status == 422
            if keep:
                assert np.asarray(items[0].original).shape[:2] == (1800, 2400)
