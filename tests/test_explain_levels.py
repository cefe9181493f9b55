"""Explain sends pictures uint8 heat levels, not float32 maps (issue 18, item 3).

The device path quantises the maps to the 256 levels the colormap has before they are copied
back (a quarter of the bytes); the pictures drawn from them must be the float path's pictures,
to within one heat level, on real photos.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.zoo.models import Classifier


def _classifier(seed: int = 4) -> Classifier:
    """96x96 RGB -> 6 classes, two convolutions, GAP + Dense; NumPy weights, fixed seed."""
    import keras

    L = keras.layers
    inputs = keras.Input((96, 96, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="target")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(6, name="logits")(x)
    outputs = L.Activation("softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=f"levels{seed}")
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-1.0, 1.0, w.shape).astype("float32") for w in model.weights])
    labels = [(str(i), f"class_{i}") for i in range(6)]
    return Classifier(model=model, name=model.name, input_size=(96, 96), labels=labels)


@pytest.fixture(scope="module")
def photos(photo_paths):
    from kerascope.images import load_image, resize

    originals = [load_image(photo_paths[n]) for n in ("chelsea", "coffee", "astronaut")]
    return originals, np.stack([resize(o, (96, 96)) for o in originals])


@pytest.mark.parametrize("engine", ["keras", "onnx"])  # the device path; the host path
def test_levels_are_the_float_maps_quantised(photos, engine, monkeypatch):
    from kerascope.cam.explain import Explainer
    from kerascope.cam.overlay import to_levels

    monkeypatch.setenv("KERASCOPE_ENGINE", engine)
    clf = _classifier()
    explainer = Explainer(clf, "gradcam", layer="target", precision="float32")
    assert explainer.on_device == (engine == "keras")
    _, pixels = photos
    targets = np.array([0, 1, 2])
    floats, classes, probs = explainer.explain_batch(pixels, targets, upsample=True)
    levels, classes8, probs8 = explainer.explain_batch(pixels, targets, upsample=True, levels=True)
    assert floats.dtype == np.float32 and levels.dtype == np.uint8
    assert levels.shape == floats.shape == (3, 96, 96)
    assert classes8.tolist() == classes.tolist() and np.array_equal(probs8, probs)
    assert {int(m.max()) for m in levels} <= {0, 255}  # normalised: peak 1, or an empty map
    difference = np.abs(levels.astype(int) - to_levels(floats).astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_pictures_from_levels_match_the_float_pictures(photos, monkeypatch):
    from kerascope.cam.explain import Explainer
    from kerascope.cam.overlay import is_empty, overlay, place_in_picture

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    explainer = Explainer(_classifier(), "gradcam", layer="target", precision="float32")
    originals, pixels = photos
    floats, _, _ = explainer.explain_batch(pixels, upsample=True)  # each photo's top-1
    levels, _, _ = explainer.explain_batch(pixels, upsample=True, levels=True)
    assert levels.max() == 255  # (seeded weights) some map to draw
    for original, f, q in zip(originals, floats, levels, strict=True):
        height, width = original.shape[:2]
        side = min(height, width)  # the whole picture, and classify's centre crop
        crop = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        for box in ((0.0, 0.0, float(width), float(height)), crop):
            drawn_f = overlay(original, place_in_picture(f, original.shape, box))
            drawn_q = overlay(original, place_in_picture(q, original.shape, box))
            difference = np.abs(drawn_f.astype(int) - drawn_q.astype(int))
            assert difference.max() <= 3 and difference.mean() < 0.05
        assert is_empty(q) == is_empty(f)
    assert is_empty(np.zeros((4, 4), np.uint8)) and not is_empty(np.eye(4, dtype=np.uint8))
