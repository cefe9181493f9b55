"""`kerascope serve` against a real server: API answers, bad input as 4xx JSON, slow clients.

One server per module (the default model, real weights), started as users start it and
reached over loopback with httpx.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.serve_server import httpx, running_server

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained-run folder as `kerascope train` leaves it (untrained weights, 3 classes)."""
    from tests.test_evaluate import untrained_run

    folder = tmp_path_factory.mktemp("runs") / "shapes"
    folder.mkdir()
    return untrained_run(folder, ["circle", "square", "triangle"])


@pytest.fixture(scope="module")
def server(run_dir):
    with running_server("--max-body-mb", "2", "--model", "efficientnet_lite0", str(run_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def files(*named: tuple[str, bytes]) -> list:
    return [("file", (name, data)) for name, data in named]


def jpeg_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size over a few bytes of data (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def decode_data_url(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_models_health_and_openapi(client):
    models = client.get("/v1/models").json()
    assert models["default"] == "efficientnet_lite0"
    info, run = models["models"]
    assert run["name"] == "shapes" and run["num_classes"] == 3 and run["default"] is False
    assert info["num_classes"] == 1000 and info["input_size"] == [224, 224]
    assert info["default"] is True and info["engine"] in ("onnx", "keras")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and set(health["models"]) == {"efficientnet_lite0", "shapes"}
    spec = client.get("/v1/openapi.json").json()
    assert {"/v1/models", "/v1/classify", "/v1/explain", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)


def test_models_list_every_method_of_the_registry_with_cost_and_sanity(client, photo_paths):
    """/v1/models lists what the API accepts (issue 20: the page offered 3 of 9): every method
    of `kerascope.cam.methods.METHODS`, so one added there shows up, with its cost and its
    sanity-check flag; each allowed one is accepted by /v1/explain, the refused one says why."""
    from kerascope.cam.methods import METHODS

    info = client.get("/v1/models").json()["models"][0]
    details = {d["name"]: d for d in info["method_details"]}
    assert list(details) == list(METHODS) and len(details) >= 9
    for name, d in details.items():
        assert d["cost"] == METHODS[name].cost and d["title"]
        assert d["sanity"] is METHODS[name].sanity
    assert details["gradcam"]["title"] == "Grad-CAM" and details["gradcam"]["sanity"] is True
    assert details["layercam"]["sanity"] is False and details["gradcam++"]["sanity"] is False
    assert "~300x" in details["scorecam"]["cost"]
    assert details["scorecam"]["expensive"] and not details["scorecam"]["allowed"]
    for name, cls in METHODS.items():  # ~Nx one pass with N >= 10 (SmoothGrad, IG): expensive
        multiple = max(map(float, re.findall(r"~(\d+)x", cls.cost)), default=1.0)
        if name != "ablationcam":  # its closed form on this GAP + Dense head: cheap
            assert details[name]["expensive"] is (multiple >= 10), name
    assert info["methods"] == [n for n, d in details.items() if d["allowed"]]
    assert info["expensive_methods"] == [n for n, d in details.items() if d["expensive"]]
    not_an_image = files(("notes.txt", b"hello"))  # accepted or refused before any work
    for name in info["methods"]:
        r = client.post("/v1/explain", params={"method": name}, files=not_an_image)
        assert r.status_code == 415, (name, r.text[:200])  # the method taken, the file not
        assert r.json()["method"] == name and "not an image" in r.json()["error"]
    refused = client.post("/v1/explain?method=scorecam", files=not_an_image)
    assert refused.status_code == 403 and "--allow-expensive" in refused.json()["error"]
    r = client.post("/v1/explain?method=eigencam",  # not on the page before: a real map now
                    files=files(("chelsea.png", photo_paths["chelsea"].read_bytes())))  # fmt: skip
    assert r.status_code == 200 and r.json()["results"][0]["heatmap"].startswith("data:image/png")


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert client.get("/static/../app.py").status_code == 404


def test_classify_cat_multipart_and_raw_body(client, photo_paths):
    from kerascope.classification import ImageResult, Prediction

    cat = photo_paths["chelsea"].read_bytes()
    coffee = photo_paths["coffee"].read_bytes()
    r = client.post("/v1/classify?top=3", files=files(("chelsea.png", cat), ("coffee.png", coffee)))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["source"] for x in results] == ["chelsea.png", "coffee.png"]  # order kept
    assert set(results[0]) == {f.name for f in dataclasses.fields(ImageResult)}
    top = results[0]["predictions"]
    assert set(top[0]) == {f.name for f in dataclasses.fields(Prediction)}
    assert len(top) == 3 and top[0]["index"] in CATS and results[0]["error"] is None
    assert results[1]["predictions"][0]["name"] == "espresso"

    raw = client.post("/v1/classify?top=1", content=cat, headers={"content-type": "image/png"})
    assert raw.status_code == 200
    (only,) = raw.json()["results"]
    assert only["source"] == "<body>" and only["predictions"][0]["index"] in CATS
    assert only["predictions"][0]["probability"] == pytest.approx(top[0]["probability"], abs=1e-5)


def test_classify_threshold_and_per_image_errors(client, photo_paths):
    cat = photo_paths["chelsea"].read_bytes()
    r = client.post("/v1/classify?top=10&threshold=0.05", files=files(("a.png", cat)))
    predictions = r.json()["results"][0]["predictions"]
    probs = [p["probability"] for p in predictions]
    assert "cat" in predictions[0]["name"].lower() and probs[0] > 0.3
    assert all(p >= 0.05 for p in probs) and 1 < len(probs) < 10  # the threshold cut the rest
    mixed = client.post("/v1/classify", files=files(("cat.png", cat), ("notes.txt", b"hello")))
    assert mixed.status_code == 200  # one bad file never loses the rest
    good, bad = mixed.json()["results"]
    assert good["predictions"] and bad["predictions"] == []
    assert bad["error"] == "cannot read 'notes.txt': not an image file (unrecognised format)"
    # a bidi override in the name reversed the rest of the message on the page: escaped there,
    # while the result's name stays the exact file name
    flipped = client.post("/v1/classify", files=files(("\u202egpj.txt.jpg", b"hello")))
    (row,) = flipped.json()["results"]
    assert row["error"].startswith("cannot read '\\u202egpj.txt.jpg': not an image file")
    assert row["source"] == "\u202egpj.txt.jpg"


def test_explain_matches_the_python_api(client, photo_paths, lite0):
    import kerascope
    from kerascope.cam.explain import Explanation

    path = photo_paths["chelsea"]
    r = client.post("/v1/explain?method=gradcam", files=files(("chelsea.png", path.read_bytes())))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam"
    (res,) = body["results"]
    expected = kerascope.explain(path, model=lite0, method="gradcam")
    fields = {f.name for f in dataclasses.fields(Explanation)} - {"heatmap", "model_map"}
    assert fields <= set(res) and res["fit"] == "whole" and res["box"] == [0.0, 0.0, 1.0, 1.0]
    assert res["class_index"] == expected.class_index and res["class_index"] in CATS
    assert res["class_name"] == expected.class_name
    assert res["probability"] == pytest.approx(expected.probability, abs=1e-5)
    overlay, layer = decode_data_url(res["overlay"]), decode_data_url(res["heatmap"])
    assert overlay.format == "JPEG" and overlay.size == (451, 300)
    assert layer.format == "PNG" and layer.mode == "RGBA" and layer.size == (451, 300)
    # The layer's opacity is the heat: it peaks where kerascope.explain's heatmap peaks.
    heat = np.asarray(layer)[..., 3].astype(float) / 255
    assert np.corrcoef(heat.ravel(), expected.heatmap.ravel())[0, 1] > 0.99
    # --fit crop (issue 20): explain's crop, class and box; the layer is clear outside the crop.
    r = client.post("/v1/explain?fit=crop", files=files(("chelsea.png", path.read_bytes())))
    (res,) = r.json()["results"]
    cropped = kerascope.explain(path, model=lite0, fit="crop")
    assert res["fit"] == "crop" and res["box"] == pytest.approx(list(cropped.box))
    assert res["class_name"] == cropped.class_name != expected.class_name
    clear = np.asarray(decode_data_url(res["heatmap"]))[..., 3]
    assert clear[:, :80].max() == 0 and clear[:, 80:].max() > 0  # crop's left edge: x = 94
    # classify with the same fit names the explained class with its probability (the page
    # sends its fit to both; before, its class list was the crop's beside a whole-picture map)
    for fit, shown in (("whole", expected), ("crop", cropped)):
        r = client.post(f"/v1/classify?fit={fit}", files=files(("c.png", path.read_bytes())))
        top = r.json()["results"][0]["predictions"][0]
        assert top["name"] == shown.class_name
        assert top["probability"] == pytest.approx(shown.probability, abs=1e-4)
    plain = client.post("/v1/classify", files=files(("c.png", path.read_bytes()))).json()
    assert plain["results"][0]["predictions"][0]["name"] == cropped.class_name  # as classify


def test_explain_of_a_large_jpeg_gives_classifys_probability(client, photo_paths):
    """A 2400x1800 JPEG: explain's picture is decoded less reduced than classify's input;
    before, the model saw that decode and said 77.0 % where classify said 77.7 %."""
    big = io.BytesIO()
    Image.open(photo_paths["chelsea"]).convert("RGB").resize((2400, 1800)).save(big, "JPEG")
    for fit in ("whole", "crop"):
        sent = files(("big.jpg", big.getvalue()))
        top = client.post(f"/v1/classify?fit={fit}&top=1", files=sent).json()["results"][0]
        (shown,) = client.post(f"/v1/explain?fit={fit}", files=sent).json()["results"]
        assert shown["class_index"] == top["predictions"][0]["index"]
        assert shown["probability"] == pytest.approx(top["predictions"][0]["probability"],
                                                     abs=1e-5)  # fmt: skip


@pytest.mark.parametrize("target", ["Siamese_cat", "n02123597", "284"])
def test_explain_a_chosen_class_as_a_jpeg_body(client, photo_paths, target):
    cat = photo_paths["chelsea"].read_bytes()
    r = client.post(
        "/v1/explain", params={"class": target, "format": "jpeg", "method": "gradcam++"},
        content=cat, headers={"content-type": "image/png"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-kerascope-class-index"] == "284"
    assert r.headers["x-kerascope-class"] == "Siamese_cat"
    assert 0 < float(r.headers["x-kerascope-probability"]) < 1
    assert Image.open(io.BytesIO(r.content)).size == (451, 300)


def test_explain_cam_and_max_side(client, photo_paths):
    astronaut = photo_paths["astronaut"].read_bytes()  # 512 x 512
    r = client.post("/v1/explain?method=cam&max_side=128", files=files(("a.png", astronaut)))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert (res["width"], res["height"]) == (128, 128)
    assert decode_data_url(res["overlay"]).size == (128, 128)


def test_a_trained_run_is_served_beside_the_zoo_model(client, photo_paths, run_dir):
    import kerascope

    path = photo_paths["coffee"]
    r = client.post("/v1/classify?model=shapes&top=3", files=files(("c.png", path.read_bytes())))
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]["predictions"]
    (want,) = kerascope.classify(path, model=run_dir, top=3)
    assert [p["name"] for p in got] == [p.name for p in want.predictions]
    assert [p["class_id"] for p in got] == [p.class_id for p in want.predictions]
    for g, w in zip(got, want.predictions, strict=True):
        assert g["probability"] == pytest.approx(w.probability, abs=1e-5)
    e = client.post("/v1/explain?model=shapes&class=square", content=path.read_bytes())
    assert e.status_code == 200, e.text
    (res,) = e.json()["results"]
    assert (res["class_name"], res["class_index"]) == ("square", 1)
    bad = client.post("/v1/explain?model=shapes&class=tabby", content=path.read_bytes())
    assert bad.status_code == 400 and "unknown class 'tabby'" in bad.json()["error"]


BAD = [
    ("post", "/v1/classify", {"content": b""}, 400, "no image"),
    ("post", "/v1/classify", {"files": files(("e.jpg", b""))}, 400, "empty upload"),
    ("post", "/v1/classify", {"content": b"plain text"}, 415, "not an image"),
    ("post", "/v1/classify", {"files": files(("t.jpg", jpeg_bytes()[:300]))}, 422, "truncated"),
    ("post", "/v1/classify", {"files": files(("bomb.png", png_claiming(30000, 30000)))}, 413,
     "900 MP, over the"),
    ("post", "/v1/classify", {"content": b"\0" * 2_100_000}, 413, "2 MB limit"),
    ("post", "/v1/classify?model=/etc/passwd", {"content": b"x"}, 404, "unknown model"),
    ("post", "/v1/classify?model=../../model.keras", {"content": b"x"}, 404, "unknown model"),
    ("post", "/v1/classify?top=0", {"content": b"x"}, 400, "top"),
    ("post", "/v1/classify?threshold=abc", {"content": b"x"}, 400, "threshold"),
    ("post", "/v1/classify", {"data": {"field": "value"}}, 415, "not an image"),
    ("post", "/v1/classify", {"content": b"--x\r\nbroken",
                              "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
    ("post", "/v1/explain?class=flying_saucer", {"content": jpeg_bytes()}, 400, "unknown"),
    ("post", "/v1/explain?class=1000", {"content": jpeg_bytes()}, 400, "0..999"),
    ("post", "/v1/explain?class=cat", {"content": jpeg_bytes()}, 400,  # was "did you mean crate"
     "'cat' is a group of 7 ImageNet classes; the server explains one class: ask for one"),
    ("post", "/v1/explain?method=lime", {"content": jpeg_bytes()}, 400, "unknown method"),
    ("post", "/v1/explain?format=gif", {"content": jpeg_bytes()}, 400, "format"),
    ("post", "/v1/explain?format=png",
     {"files": files(("a.jpg", jpeg_bytes()), ("b.jpg", jpeg_bytes()))}, 400, "one picture"),
    ("get", "/v1/classify", {}, 405, "Method Not Allowed"),
    ("get", "/v1/nothing", {}, 404, "Not Found"),
]  # fmt: skip


@pytest.mark.parametrize(("verb", "path", "kwargs", "status", "says"), BAD)
def test_bad_requests_are_4xx_json(client, verb, path, kwargs, status, says):
    r = getattr(client, verb)(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert says in r.json()["error"]


def test_slow_and_aborted_uploads_do_not_block_others(server, client, photo_paths):
    port = int(server.rsplit(":", 1)[1])
    cat = photo_paths["chelsea"].read_bytes()
    stalled = []
    for _ in range(4):  # uploads that announce 1 MB and send 10 bytes, then stall
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 1000000\r\n\r\n" + cat[:10])  # fmt: skip
        stalled.append(s)
    start = time.perf_counter()
    r = client.post("/v1/classify", files=files(("cat.png", cat)))
    assert r.status_code == 200 and time.perf_counter() - start < 10
    for s in stalled:  # abort mid-body: the server drops them and carries on
        s.close()
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500000\r\n\r\n")
    half.sendall(cat[:1000])
    half.shutdown(socket.SHUT_RDWR)
    half.close()
    assert client.post("/v1/classify", content=cat).status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"


def test_a_loopback_server_answers_its_own_names_only(server, photo_paths):
    """DNS rebinding: a page of another site reaches 127.0.0.1 under its own name (its
    requests say ``Host: evil.example``) and reads the answers. Before: answered."""
    from kerascope.serve.hosts import host_name, is_loopback

    port = int(server.rsplit(":", 1)[1])
    cat = photo_paths["chelsea"].read_bytes()
    for name in ("evil.example", "192.168.1.5", "localhost.evil.example", "",
                 "127.attacker.example", "127.0.0.1.nip.io"):  # fmt: skip
        r = httpx.post(f"{server}/v1/classify", content=cat, headers={"Host": f"{name}:{port}"})
        assert r.status_code == 400 and "DNS rebinding" in r.json()["error"], (name, r.text)
    for name in ("localhost", "127.0.0.1", "LOCALHOST", "localhost.", "127.0.0.2", "[::1]"):
        r = httpx.post(f"{server}/v1/classify", content=cat, headers={"Host": f"{name}:{port}"})
        assert r.status_code == 200, (name, r.text)
    assert [host_name(h) for h in ("[::1]:80", "a:1", "::1", "b")] == ["::1", "a", "::1", "b"]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("127.attacker.example")
    no_host = socket.create_connection(("127.0.0.1", port), timeout=30)  # HTTP/1.0: no Host
    no_host.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert no_host.recv(100).startswith(b"HTTP/1.1 200"), "a request without Host is answered"
    no_host.close()


def test_a_methods_first_pass_does_not_hold_up_classify(server, client, photo_paths):
    """A method's first pass builds and compiles its explainer: on its own thread, so
    classify is answered meanwhile (before: it waited behind it, 2-9 s per new method)."""
    cat = photo_paths["chelsea"].read_bytes()
    done: dict = {}

    def first_guided() -> None:
        r = httpx.post(f"{server}/v1/explain?method=guidedbackprop", content=cat, timeout=300)
        done["explain"] = (r.status_code, time.monotonic())

    worker = threading.Thread(target=first_guided)
    worker.start()
    deadline = time.monotonic() + 60
    while "explain" not in done:  # until its pass runs (or it is already over: no check)
        (_, stats), *_ = client.get("/healthz").json()["models"].items()
        if stats["explain"].get("guidedbackprop", {}).get("running"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    running = "explain" not in done
    r = client.post("/v1/classify", content=cat)
    classified = time.monotonic()
    worker.join(300)
    assert r.status_code == 200 and done["explain"][0] == 200
    if running:
        assert classified < done["explain"][1]  # answered while the first pass still ran


def test_port_in_use_is_one_line_before_loading_anything():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "kerascope.serve", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"kerascope: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert time.perf_counter() - start < 60


def test_cli_checks_its_options():
    import argparse

    from kerascope.cli_serve import add_serve_command
    from kerascope.errors import CliError

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "-m", "resnet50", "runs/cats", "--model", "x.keras"])
    assert args.models == ["resnet50", "runs/cats", "x.keras"]
    assert (args.host, args.port, args.max_batch, args.max_wait_ms) == ("127.0.0.1", 8000, 32, 5)
    for bad in (["--port", "70000"], ["--max-body-mb", "0"]):
        with pytest.raises(CliError):
            args = parser.parse_args(["serve", *bad])
            args.func(args)
    with pytest.raises(SystemExit):  # a whole number of at least 1, as every batch size
        parser.parse_args(["serve", "--max-batch", "0"])


def test_keras_engine_pads_batches_to_powers_of_two(run_dir, monkeypatch):
    """On the jit engine every batch size compiles anew: the batcher's sizes are bucketed."""
    from kerascope.serve.served import ServedModel
    from kerascope.zoo.models import load_model

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    served = ServedModel("shapes", load_model(run_dir), max_batch=32, max_wait_ms=5)
    try:
        assert served.engine == "keras"
        assert [served.classify_rows(n) for n in (1, 3, 5, 17, 32)] == [1, 4, 8, 32, 32]
        images = list(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
        got = served._classify(images)
        want = served.clf.model.predict_on_batch(np.stack(images).astype("float32"))
        assert len(got) == 3
        np.testing.assert_allclose(np.stack(got), np.asarray(want), atol=1e-5)
    finally:
        served.executor.shutdown()
