"""Review fixes for issue 18 / 22 (reduced precision and int8): each test failed before its fix.

- a reduced-precision keras forward follows the model's current weights on every backend (on
  torch it called the mixed clone directly: the weights copied when the clone was built);
- float16 pixel methods (saliency, integrated gradients, SmoothGrad) keep maps whose gradients
  fall below float16's smallest number (loss scaling, as Grad-CAM's);
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
