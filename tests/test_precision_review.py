"""Review fixes for issue 18 / 22 (reduced precision and int8): each test failed before its fix.

- a reduced-precision keras forward follows the model's current weights on every backend (on
  torch it called the mixed clone directly: the weights copied when the clone was built);
- float16 pixel methods (saliency, integrated gradients, SmoothGrad) keep maps whose gradients
  fall below float16's smallest number (loss scaling, as Grad-CAM's: they were blank);
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
