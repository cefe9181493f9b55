"""Load on a real server (bounded, loopback only): 16 clients x 8 requests, all answered,
none lost or mixed up, every result equal to `kerascope.classify` on the same file."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve_server import httpx

# 16 clients at once make the batcher gather; 8 requests each (was 20: 320 Lite0 passes at
# 224 px) still cross every client's requests with the others' many times over.
CLIENTS, REQUESTS = 16, 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(lite0_server):
    """The session's default server: ``--max-batch 32 --max-wait-ms 5`` are serve's defaults."""
    return lite0_server


def test_16_clients_x_8_requests_match_classify(server, photo_paths, lite0):
    import kerascope

    paths = list(photo_paths.values())
    expected = {
        p.name: r for p, r in zip(paths, kerascope.classify(paths, model=lite0), strict=True)
    }
    payloads = {p.name: p.read_bytes() for p in paths}
    before = httpx.get(f"{server}/healthz").json()["models"]["efficientnet_lite0"]
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> list[tuple[str, int, dict]]:
        answers = []
        with httpx.Client(base_url=server, timeout=120) as c:
            start.wait()  # all clients at once: the batcher must gather them
            for j in range(REQUESTS):
                name = paths[(i + j) % len(paths)].name
                r = c.post("/v1/classify", files=[("file", (name, payloads[name]))])
                answers.append((name, r.status_code, r.json()))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for batch in pool.map(client, range(CLIENTS)) for a in batch]

    assert len(answers) == CLIENTS * REQUESTS
    assert [status for _, status, _ in answers] == [200] * (CLIENTS * REQUESTS)
    for name, _, body in answers:
        (result,) = body["results"]
        assert result["source"] == name  # never someone else's answer
        want = expected[name].predictions
        got = result["predictions"]
        assert [p["index"] for p in got] == [p.index for p in want]
        for g, w in zip(got, want, strict=True):
            assert g["probability"] == pytest.approx(w.probability, abs=1e-5)
    after = httpx.get(f"{server}/healthz").json()["models"]["efficientnet_lite0"]
    assert after["items"] - before["items"] == CLIENTS * REQUESTS  # every image, once
    assert after["batches"] - before["batches"] < CLIENTS * REQUESTS  # and some shared a pass
    assert after["largest"] > 1
