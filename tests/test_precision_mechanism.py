"""One reduced-precision mechanism (`kerascope.mixed_precision`) for classify and explain, and
float16 Grad-CAM with loss scaling (issue 18, items 4 and 5).

Before: explain switched the user's layers to the mixed policy while it traced (a swap other
threads could see) and float16 gradients flushed to zero where they are small; now both paths
run a private mixed clone, and float16 Grad-CAM scales the class score's gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.zoo.models import Classifier

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _small_gradient_classifier(seed: int = 3) -> Classifier:
    """64x64 RGB -> 5 classes whose class score moves little with each activation: GAP over
    64x64 positions and a Dense kernel of ~1e-5 give d(score)/dA ~ 1e-9, below float16's
    smallest number (6e-8). A network deep or wide enough has such gradients; this one is
    small enough to compile in a second. NumPy weights, fixed seed."""
    import keras

    L = keras.layers
    inputs = keras.Input((64, 64, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="target")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(5, name="logits")(x)
    outputs = L.Activation("softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=f"smallgrad{seed}")
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        value = rng.uniform(-1.0, 1.0, w.shape).astype("float32")
        if "logits" in w.path and "kernel" in w.path:
            value *= 1e-5
        weights.append(value)
    model.set_weights(weights)
    labels = [(str(i), f"class_{i}") for i in range(5)]
    return Classifier(model=model, name=model.name, input_size=(64, 64), labels=labels)


@pytest.fixture(scope="module")
def small_gradients():
    return _small_gradient_classifier()


@pytest.fixture(scope="module")
def cat_64(chelsea):
    from kerascope.images import resize

    return resize(chelsea, (64, 64))[None]


def _gradcam(clf, pixels, precision, targets=None):
    from kerascope.cam.explain import Explainer

    explainer = Explainer(clf, "gradcam", layer="target", precision=precision)
    assert explainer.precision == precision and explainer.cam.on_device
    return explainer.explain_batch(pixels, targets)


def test_float16_gradcam_matches_float32_where_gradients_underflow(
    small_gradients, cat_64, monkeypatch
):
    from kerascope.cam import gradients

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")  # float32 on the same device path
    targets = np.array([2])
    exact, classes, _ = _gradcam(small_gradients, cat_64, "float32", targets)
    assert exact.max() == pytest.approx(1.0) and (exact > 0.05).mean() > 0.05  # a real map
    half, half_classes, _ = _gradcam(small_gradients, cat_64, "float16", targets)
    assert half_classes.tolist() == classes.tolist() == [2]
    assert np.abs(half - exact).max() < 0.02
    import keras

    if keras.backend.backend() != "jax":
        return  # torch's CPU autocast keeps the pooling in float32: nothing underflows there
    # Without the scaling (the code before): the gradients flush to zero, the map is lost.
    small_gradients.extra.clear()  # a new probe: its device function traces again
    monkeypatch.setattr(gradients, "LOSS_SCALE", 1.0)
    unscaled, _, _ = _gradcam(small_gradients, cat_64, "float16", targets)
    small_gradients.extra.clear()
    assert np.abs(unscaled - exact).max() > 0.3


def test_reduced_precision_runs_a_private_clone_that_reads_current_weights(
    small_gradients, cat_64, monkeypatch
):
    """The user's layers keep their float32 policy (nothing to race with); the clone reads the
    original's variables on each call, so new weights change the map without a new compile."""
    from kerascope.mixed_precision import precision_runner

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = _small_gradient_classifier(seed=5)
    before, _, _ = _gradcam(clf, cat_64, "bfloat16", np.array([1]))
    assert {layer.dtype_policy.name for layer in clf.model.layers} == {"float32"}
    from kerascope.cam.base import get_probe

    model = get_probe(clf, "target")._probe_and_score()[0]  # image + delta -> A, logits
    runner, source = precision_runner(model, "bfloat16")
    assert runner is not source and source is model
    assert runner.get_layer("conv").dtype_policy.name == "mixed_bfloat16"
    assert precision_runner(source, "bfloat16")[0] is runner  # built once
    conv = clf.model.get_layer("conv")
    conv.kernel.assign(-np.asarray(conv.kernel))  # as a trainer would
    after, _, _ = _gradcam(clf, cat_64, "bfloat16", np.array([1]))
    assert not np.allclose(before, after, atol=0.05)


def test_pixel_methods_in_bfloat16_use_the_same_clone(small_gradients, cat_64, monkeypatch):
    from kerascope.cam.explain import Explainer

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    for method in ("saliency", "guidedbackprop"):
        maps = {}
        for precision in ("float32", "bfloat16"):
            explainer = Explainer(small_gradients, method, precision=precision)
            maps[precision] = explainer.explain_batch(cat_64, np.array([2]))[0]
        assert explainer.precision == "bfloat16"
        assert {layer.dtype_policy.name for layer in small_gradients.model.layers} == {"float32"}
        assert np.corrcoef(maps["float32"].ravel(), maps["bfloat16"].ravel())[0, 1] > 0.9


@pytest.mark.slow  # Lite0 compiled three times by XLA on the CPU
def test_reduced_precision_agrees_with_float32_on_the_cat_for_classify_and_explain(lite0, chelsea):
    """The real model and photo: classify and Grad-CAM in bfloat16 and float16 against float32
    (measured: maps within 0.017 (bf16) and 0.0024 (fp16) of float32 at the default layer)."""
    from kerascope.cam.explain import Explainer
    from kerascope.images import resize
    from kerascope.inference import compiled

    x = resize(chelsea, (224, 224))[None]
    exact = compiled(lite0.model, "keras", "float32")(x)[0]
    m32, c32, _ = Explainer(lite0, "gradcam", precision="float32").explain_batch(x)
    assert int(np.argmax(exact)) in CATS and c32[0] == int(np.argmax(exact))
    for precision, tolerance in (("bfloat16", 0.05), ("float16", 0.01)):
        probs = compiled(lite0.model, "keras", precision)(x)[0]
        assert int(np.argmax(probs)) == int(np.argmax(exact))
        assert np.abs(probs - exact).max() < 0.02
        maps, classes, _ = Explainer(lite0, "gradcam", precision=precision).explain_batch(x)
        assert classes.tolist() == c32.tolist()
        assert np.abs(maps - m32).max() < tolerance
