"""Review fixes for issue 18 / 22 (reduced precision and int8): each test failed before its fix.

- a reduced-precision keras forward follows the model's current weights on every backend (on
  torch it called the mixed clone directly: the weights copied when the clone was built);
- float16 pixel methods (saliency, integrated gradients, SmoothGrad) keep maps whose gradients
  fall below float16's smallest number (loss scaling, as Grad-CAM's: they were blank);
- ``serve --precision int8``: refused at startup in the one refusal line where the bound is
  missed (before: 'precision must be one of ...' for every model), and where it is met classify
  runs int8 while explain answers 200 with float32 maps (before: no server started at all).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_precision_mechanism import _small_gradient_classifier


@pytest.fixture(scope="module")
def cat_64(chelsea):
    from kerascope.images import resize

    return resize(chelsea, (64, 64))[None]


@pytest.mark.backends  # the eager (torch) path is where it went stale
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_forward_follows_new_weights(cat_64, precision, monkeypatch):
    """Train-then-classify in one process: new weights after the first call must be used."""
    from kerascope.inference import compiled

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    model = _small_gradient_classifier(seed=7).model
    fwd = compiled(model, "keras", precision)
    fwd(cat_64)  # builds (and caches) the mixed clone
    rng = np.random.default_rng(0)
    logits = model.get_layer("logits")
    logits.kernel.assign(rng.uniform(-1.0, 1.0, logits.kernel.shape).astype("float32"))
    exact = compiled(model, "keras", "float32")(cat_64)[0]
    reduced = fwd(cat_64)[0]
    assert np.abs(reduced - exact).max() < 0.02, (reduced, exact)


@pytest.fixture(scope="module")
def small_gradients():
    return _small_gradient_classifier()


@pytest.mark.backends
@pytest.mark.parametrize("method", ["saliency", "ig", "smoothgrad", "guidedbackprop"])
def test_float16_pixel_methods_keep_maps_whose_gradients_underflow(
    small_gradients, cat_64, method, monkeypatch
):
    """This model's pixel gradients (~1e-9 inside) are below float16's smallest number: before,
    every float16 pixel map was blank (all 0) on JAX and torch; now the class score's gradient
    is loss-scaled as Grad-CAM's and the map matches float32's (measured corr >= 0.996)."""
    from kerascope.cam.explain import Explainer

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    maps = {}
    for precision in ("float32", "float16"):
        explainer = Explainer(small_gradients, method, precision=precision)
        assert explainer.precision == precision
        maps[precision] = explainer.explain_batch(cat_64, np.array([2]))[0][0]
    exact, half = maps["float32"], maps["float16"]
    assert exact.max() == pytest.approx(1.0) and half.max() == pytest.approx(1.0)
    assert np.corrcoef(exact.ravel(), half.ravel())[0, 1] > 0.98


# --- serve --precision int8 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A small saved classifier the ONNX converter supports (conv, depthwise, projection)."""
    from tests.test_quantize import _tiny_bottleneck

    path = tmp_path_factory.mktemp("int8serve") / "tiny.keras"
    _tiny_bottleneck().save(path)
    return path


@pytest.fixture
def small_int8(monkeypatch):
    """Few crops and one rung (fast); the bound is then forced by each test."""
    from kerascope import quantize

    monkeypatch.setattr(quantize, "CALIBRATION_IMAGES", 16)
    monkeypatch.setattr(quantize, "CHECK_IMAGES", 24)
    monkeypatch.setattr(quantize, "LADDER", ((),))
    for name in ("KERASCOPE_ENGINE", "KERASCOPE_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    return quantize


def test_serve_int8_refused_at_startup_in_one_line(tiny_file, small_int8, monkeypatch, capsys):
    """A model whose int8 graph misses the bound: `serve` stops before serving, with the one
    refusal line (before: 'precision must be one of auto, float32, bfloat16, float16')."""
    from kerascope import cli
    from kerascope.serve import app

    monkeypatch.setattr(small_int8, "MIN_AGREEMENT", 1.01)  # missed by any graph

    def must_not_serve(*args, **kwargs):
        raise AssertionError("serve got past loading a model int8 refuses")

    monkeypatch.setattr(app, "create_app", must_not_serve)
    code = cli.main(["serve", "-m", str(tiny_file), "--precision", "int8", "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: int8 refused for 'bottleneck'") or (
        "int8 refused for 'bottleneck'" in err[-1]
    )
    assert "top-1 agreement with float32" in err[-1] and "use --precision float32" in err[-1]


def test_serve_int8_classifies_in_int8_and_explains_in_float32(tiny_file, small_int8, monkeypatch):
    """A model whose int8 graph meets the bound: classify runs the int8 graph and says so;
    explain (no int8 gradients) answers 200 with maps computed in float32, and says that."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from kerascope.serve.app import create_app
    from kerascope.serve.served import load_served

    monkeypatch.setattr(small_int8, "MIN_AGREEMENT", 0.0)  # met by any graph
    monkeypatch.setattr(small_int8, "MAX_MEAN_DP", 1.0)
    served = load_served([str(tiny_file)], precision="int8")
    (model,) = served.values()
    assert (model.precision, model.engine) == ("int8", "onnx")
    data = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(data, "PNG")
    upload = [("file", ("grey.png", data.getvalue()))]
    with TestClient(create_app(served)) as client:
        assert client.get("/v1/models").json()["models"][0]["precision"] == "int8"
        classified = client.post("/v1/classify", files=upload)
        assert classified.status_code == 200 and classified.json()["precision"] == "int8"
        for method in ("gradcam", "saliency"):
            explained = client.post(f"/v1/explain?method={method}", files=upload)
            assert explained.status_code == 200, explained.text
            assert explained.json()["precision"] == "float32"
        picture = client.post("/v1/explain?format=png", files=upload)
        assert picture.status_code == 200 and picture.headers["X-Kerascope-Precision"] == "float32"
