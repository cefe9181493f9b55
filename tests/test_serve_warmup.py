"""``kerascope serve --warm-up``: what a server compiles before it answers, counted in JAX's
compile log (not timed). A warmed server answers explain passes of every size without a
compile; a cheap method's passes run at the same buckets whatever engine classify runs on,
while classify on onnxruntime runs unpadded; a warm-up the server cannot do stops it at the
start in one line (exit 2). Tiny random-weight models (32 px), so compiles take a second."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.serve_server import httpx, server_process

COMPILING = re.compile(r"Compiling .*?uint8\[(\d+),32,32,3\]")  # a pass's pixels: its rows


@pytest.fixture
def compiles():
    """Every JAX compilation in this process while the test runs (JAX's own compile log)."""
    import jax

    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Compiling "):
                seen.append(record.getMessage())

    was = jax.config.jax_log_compiles
    handler, logger = Seen(), logging.getLogger("jax")
    jax.config.update("jax_log_compiles", True)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        jax.config.update("jax_log_compiles", was)


def pass_rows(messages: list[str]) -> list[int]:
    """The batch sizes compiled for passes over 32 px pictures."""
    return sorted(int(m.group(1)) for m in map(COMPILING.search, messages) if m)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def explain(client, method: str, n: int):
    """One request of ``n`` photos: one pass of ``n`` images (at most 8 a pass)."""
    files = [("file", (f"{i}.png", png(i), "image/png")) for i in range(n)]
    r = client.post("/v1/explain", params={"method": method}, files=files)
    assert r.status_code == 200, r.text[:300]
    return r


def test_warm_up_values():
    """Names as the API takes them (aliases, any case), once each; all and none alone."""
    from kerascope.serve.warmup import DEFAULT, WarmUpError, warm_up_plan

    assert warm_up_plan(True).methods == DEFAULT and warm_up_plan(False) is None
    plan = warm_up_plan("Grad-CAM, saliency,gradcam")
    assert (plan.methods, plan.named) == (("gradcam", "saliency"), True)
    assert warm_up_plan(["ig", "guidedbackprop"]).methods == ("ig", "guidedbackprop")
    assert warm_up_plan("none").methods == () and not warm_up_plan("none").every
    assert warm_up_plan("ALL").every
    bad_values = [
        ("gradcm", "unknown method 'gradcm'"),
        ("all,gradcam", "stands alone"),
        ("ig:steps=4", "without options"),
        ("gradcam,,saliency", "separated"),
    ]
    for bad, says in bad_values:
        with pytest.raises(WarmUpError, match=says):
            warm_up_plan(bad)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--warm-up", "gradcam,salency"], "--warm-up: unknown method 'salency'"),
        (["--warm-up", "scorecam"], "start it with --allow-expensive"),
    ],
)
def test_a_warm_up_the_server_cannot_do_exits_2_in_one_line(tiny_cam_file, args, says):
    """Refused at the start, before the server answers: an unknown name before any model
    loads, an expensive method (here: 300x Grad-CAM) unless the server allows them."""
    cmd = [sys.executable, "-m", "kerascope.serve", "--port", "0", "-m", str(tiny_cam_file), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and says in errors[0], done.stderr[-2000:]
    assert errors[0].startswith("kerascope: error: ") and "Traceback" not in done.stderr
    if "unknown" in says:
        assert "loading" not in done.stderr  # said before minutes of model loading


@pytest.fixture(scope="module")
def warmed(tiny_cam_file):
    """A real server whose saliency and gradcam are warmed up, JAX logging its compiles."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JAX_LOG_COMPILES", "1")  # read by the server process
        with server_process("-m", str(tiny_cam_file), "--warm-up", "saliency,gradcam") as server:
            yield server


def test_a_warmed_server_answers_every_batch_size_without_compiling(warmed):
    startup = warmed.log()
    said = [line for line in startup.splitlines() if line.startswith("kerascope: tiny: ")]
    assert re.search(r"saliency warmed up for 1, 2, 4, 8 image\(s\) in \d+\.\d s", "\n".join(said))
    assert any(line.startswith("kerascope: tiny: gradcam warmed up") for line in said)
    assert pass_rows(startup.splitlines()).count(8) >= 1  # saliency's 8-row pass compiled then
    before = startup.count("Compiling ")
    with httpx.Client(base_url=warmed.url, timeout=120) as client:
        for n in range(1, 9):
            for method in ("saliency", "gradcam"):
                explain(client, method, n)
        stats = client.get("/healthz").json()["models"]["tiny"]["explain"]
        assert stats["saliency"]["largest"] == 8 and stats["saliency"]["batches"] == 8
        assert warmed.log().count("Compiling ") == before  # no request compiled anything
        explain(client, "guidedbackprop", 3)  # not warmed: it compiles (so the count works)
        assert warmed.log().count("Compiling ") > before


def test_load_served_warms_every_bucket_of_the_jit(tiny_cam_file, compiles, monkeypatch):
    """On the jit engine (GPUs' default) gradcam and classify compile per batch size: warmed
    through the Python API, requests of 1..8 images and classify passes of 1..32 compile
    nothing more."""
    from fastapi.testclient import TestClient

    from kerascope.serve.app import create_app
    from kerascope.serve.served import load_served

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    said: list[str] = []
    served = load_served([str(tiny_cam_file)], warm=["gradcam"], announce=said.append)
    assert served["tiny"].engine == "keras"
    assert pass_rows(compiles).count(8) == 2  # classify's and gradcam's 8-row passes: at warm-up
    assert [line.split(" warmed")[0] for line in said[1:]] == ["tiny: gradcam"]
    warm = len(compiles)
    with TestClient(create_app(served), base_url="http://127.0.0.1") as client:
        for n in range(1, 9):
            explain(client, "gradcam", n)
    assert compiles[warm:] == []
    # classify too, at every size a pass of 1..--max-batch images runs at (before: 1 only)
    assert said[0].startswith("tiny: classify ready in ")
    assert said[0].endswith(" (compiled for 1, 2, 4, 8, 16, 32 image(s))"), said
    for n in range(1, 33):
        served["tiny"].warm_pass(None, n)
    assert compiles[warm:] == []


def test_cheap_methods_run_at_buckets_and_classify_on_onnx_unpadded(tiny_cam_file, compiles):
    """One rule for a pass's rows: a cheap method's passes run at the buckets of its pass
    limit (here --max-batch 6: 1, 2, 4, 6), exactly what warm-up compiles (before: 8 rows for
    5 or 6 images, which no warm-up at 6 would have compiled); classify on onnxruntime,
    which compiles nothing per size, runs the rows it has."""
    from kerascope.serve.served import load_served
    from kerascope.serve.warmup import warm_sizes

    model = load_served([str(tiny_cam_file)], max_batch=6, warm=False)["tiny"]
    if model.engine != "onnx":
        pytest.skip(f"classify runs on {model.engine} here, not onnxruntime")
    assert warm_sizes(model, "saliency") == [1, 2, 4, 6]
    for n in range(1, 7):
        model.warm_pass("saliency", n)
    assert pass_rows(compiles) == [1, 2, 4, 6]

    forward, rows = model.forward(), []
    run = forward._run
    forward._run = lambda xs: rows.append(len(xs[0])) or run(xs)
    for n in (3, 5):
        model.warm_pass(None, n)
    assert rows == [3, 5]


def test_a_method_the_model_cannot_explain(tmp_path):
    """Named, it stops the start in one line; by default it is left to its requests (which
    say why), with a line, and the server starts (as before: explain is optional)."""
    import keras

    from kerascope.serve.served import load_served
    from kerascope.serve.warmup import WarmUpError

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Flatten(),  # no feature map to explain
        keras.layers.Dense(3, activation="softmax"),
    ])  # fmt: skip
    model.save(tmp_path / "flat.keras")
    with pytest.raises(WarmUpError, match=r"^--warm-up gradcam on model 'flat': \S"):
        load_served([str(tmp_path / "flat.keras")], warm="gradcam")
    said: list[str] = []
    served = load_served([str(tmp_path / "flat.keras")], announce=said.append)
    assert said[0].startswith("flat: classify ready in ") and len(said) == 2, said
    assert said[1].startswith("flat: gradcam not warmed up: ")
    assert served["flat"]._cams == {}


def test_score_cam_warm_up_compiles_what_a_request_runs(tmp_path, compiles, monkeypatch):
    """Score-CAM runs its passes over the channels whose map varies: a warm-up on black
    pictures, which a model that rescales by 1/255 maps to flat zero maps, compiled none, and
    the first request compiled them. The warm-up pictures are noise now."""
    import keras

    from kerascope.serve.limits import ServeLimits
    from kerascope.serve.served import load_served

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(4)(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="flat")
    model.save(tmp_path / "flat.keras")
    said: list[str] = []
    limits = ServeLimits(allow_expensive=True, max_expensive_images=1)
    served = load_served([str(tmp_path / "flat.keras")], warm="scorecam", limits=limits,
                         announce=said.append)["flat"]  # fmt: skip
    assert any("scorecam warmed up for 1 image(s)" in line for line in said), said
    warm = len(compiles)
    photo = np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)
    (answer,) = served._explain_each([("scorecam", photo, -1)])
    assert answer[0].shape == (8, 8) and compiles[warm:] == []  # the target layer's map
