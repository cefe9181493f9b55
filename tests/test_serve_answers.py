"""What the server's answers say, in process (a tiny random-weight model, no subprocess): an
error's status and message agree when every file fails in its own way; every answer, refusals
before any route runs and a server error included, carries the security headers; a tiny photo's
pictures are drawn enlarged, as explain draws them (a 1x1 photo got a 1x1 overlay)."""

from __future__ import annotations

import base64
import io

import h11
import numpy as np
import pytest
from PIL import Image

from kerascope.serve.hosts import SECURITY_HEADERS

SECURITY = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}


@pytest.fixture(scope="module")
def app(tiny_cam_file):
    from kerascope.serve.app import create_app
    from kerascope.serve.served import load_served

    return create_app(load_served([str(tiny_cam_file)]), loopback=True)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def picture(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.mark.parametrize("endpoint", ["classify", "explain"])
def test_status_and_message_name_the_same_failure(client, endpoint):
    """A text file (415) and an empty one (400): the answer is the 400, and it said the text
    file's "not an image file" (the first file's message, whatever its status)."""
    text, empty = ("notes.jpg", b"just some text\n"), ("empty.png", b"")
    for sent in ([text, empty], [empty, text]):
        r = client.post(f"/v1/{endpoint}", files=[("file", f) for f in sent])
        rows = {row["source"]: row["error"] for row in r.json()["results"]}
        assert r.status_code == 400, r.text
        assert (
            r.json()["error"]
            == rows["empty.png"]
            == "cannot read 'empty.png': empty upload (0 bytes)"
        )
    r = client.post(f"/v1/{endpoint}", files=[("file", text)])
    assert r.status_code == 415 and "not an image file" in r.json()["error"]


def test_refusals_before_any_route_and_server_errors_carry_the_security_headers(
    client, app, monkeypatch
):
    """Before: the foreign Host's 400 (LoopbackHosts sat outside the middleware adding them)
    and a 500 (Starlette sends it outside every middleware) came without them."""
    from kerascope.serve.served import ServedModel

    foreign = client.get("/v1/models", headers={"Host": "evil.example"})
    assert foreign.status_code == 400 and "DNS rebinding" in foreign.json()["error"]
    own = client.get("/v1/models")
    assert own.status_code == 200

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ServedModel, "stats", broken)
    bug = client.get("/healthz")
    assert bug.status_code == 500 and "internal error" in bug.json()["error"]
    for r in (foreign, own, bug):
        assert {k: r.headers.get(k) for k in SECURITY} == SECURITY, r.request.url


class _Transport:
    def __init__(self):
        self.sent, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


def _answer(raw: bytes) -> tuple[int, dict]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(raw)
    event = client.next_event()
    return event.status_code, {k.decode(): v.decode() for k, v in event.headers}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
    ids=["request-line", "transfer-coding"],
)
def test_answers_written_under_the_app_carry_the_security_headers(raw, status):
    """The malformed request's 400/501 and the connection cap's 503 are written by the protocol
    itself (`kerascope.serve.connections`); before, with headers of their own only."""
    from kerascope.serve.connections import _malformed, _refuse

    class Protocol:
        conn, transport = h11.Connection(h11.SERVER), _Transport()

    protocol = Protocol()
    protocol.conn.receive_data(raw)
    with pytest.raises(h11.RemoteProtocolError) as caught:
        protocol.conn.next_event()
    _malformed(protocol, caught.value)
    got, headers = _answer(protocol.transport.sent)
    assert got == status and protocol.transport.closed
    assert {k: headers.get(k) for k in SECURITY} == SECURITY

    transport = _Transport()
    _refuse(transport, 10)
    got, headers = _answer(transport.sent)
    assert got == 503 and headers["retry-after"] == "1"
    assert {k: headers.get(k) for k in SECURITY} == SECURITY


def _drawn_as(client, sent: list, shape: tuple[int, ...]):
    """Explain ``sent`` with either fit: the picture, its heatmap layer and the reported size
    are ``shape``; then the bare picture (alpha 0, PNG), for the caller to compare."""
    for fit in ("whole", "crop"):
        r = client.post(f"/v1/explain?fit={fit}", files=sent)
        assert r.status_code == 200, r.text
        row = r.json()["results"][0]
        assert (row["height"], row["width"]) == shape[:2]
        assert picture(row["heatmap"]).shape == (*shape[:2], 4)
        assert picture(row["overlay"]).shape == shape
    return client.post("/v1/explain?format=png&alpha=0", files=sent)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (6, 8)])
def test_a_tiny_photo_is_drawn_enlarged_as_explain_draws_it(client, chelsea, height, width):
    """Before: a 1x1 photo's overlay and heatmap were 1x1 and an 8x6 one's 8x6, which the page
    stretched into one flat colour. Now enlarged by a whole factor (every pixel a block) to
    explain's ``OUTPUT_MIN_SIDE``, as its pictures are; ``max_side`` still caps them."""
    from kerascope.cam.enlarge import enlarge
    from kerascope.cam.save import OUTPUT_MIN_SIDE
    from kerascope.serve.uploads import pixel_cost

    photo = np.asarray(Image.fromarray(chelsea).resize((width, height), Image.BOX))
    sent = [("file", ("tiny.png", png(photo)))]
    drawn = enlarge(photo, OUTPUT_MIN_SIDE)
    assert max(drawn.shape[:2]) >= OUTPUT_MIN_SIDE > max(drawn.shape[:2]) - max(height, width)
    # No heat at all: the picture is the photo itself, each pixel a whole block of it.
    bare = _drawn_as(client, sent, drawn.shape)
    assert np.array_equal(picture("," + base64.b64encode(bare.content).decode()), drawn)
    capped = client.post("/v1/explain?max_side=100", files=sent).json()["results"][0]
    assert max(capped["width"], capped["height"]) == 100
    # the pixel budget weighs the picture as drawn, not as sent
    size = (32, 32)
    assert pixel_cost([("t", png(photo))], size, True, 1024) == height * width + drawn.size // 3


@pytest.mark.parametrize(("height", "width"), [(12, 600), (600, 12)])
def test_a_thin_photo_is_drawn_stretched_as_explain_draws_it(client, chelsea, height, width):
    """Before: a 600x12 strip came back as a 600x12 overlay (a 30000x20 panorama: 1024x1 at
    the default max_side), which showed no heat. Its short side is now stretched to
    ``MIN_PICTURE_SIDE``, as explain's pictures are (`kerascope.cam.stretch`)."""
    from kerascope.cam.stretch import MIN_PICTURE_SIDE, stretch_array
    from kerascope.serve.uploads import pixel_cost

    photo = np.asarray(Image.fromarray(chelsea).resize((width, height), Image.BOX))
    drawn = stretch_array(photo)  # explain's rule, on the photo as sent
    assert min(drawn.shape[:2]) == MIN_PICTURE_SIDE and max(drawn.shape[:2]) == 600
    sent = [("file", ("thin.png", png(photo)))]
    bare = _drawn_as(client, sent, drawn.shape)
    shown = picture("," + base64.b64encode(bare.content).decode())
    assert shown.shape == drawn.shape  # the photo itself, stretched
    assert np.abs(shown.astype(int) - drawn.astype(int)).mean() < 3  # bilinear vs bicubic
    capped = client.post("/v1/explain?max_side=100", files=sent).json()["results"][0]
    assert (capped["width"], capped["height"]) == (100, 100)  # never past its long side
    assert pixel_cost([("t", png(photo))], (32, 32), True, 1024) == height * width + drawn.size // 3
