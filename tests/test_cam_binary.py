"""Heatmaps of a binary run (seed 003: GAP -> Dropout -> Dense(1, sigmoid), read as
``[1 - p, p]``): every method explains the sigmoid's logit signed by class, ``z`` for class 1
and ``-z`` for class 0. Before, Grad-CAM differentiated the probability, whose gradient is 0
once float32 rounds a confident ``p`` to 1 (every map "empty"), and CAM was refused."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.cam.base import as_classifier, get_probe, normalise
from kerascope.cam.explain import Explainer
from kerascope.training import train
from kerascope.zoo.sigmoid_heads import two_class_view

from .test_binary_head import two  # noqa: F401  (module fixture: grey crops, cat and coffee)
from .test_regularise import crops  # noqa: F401  (the module fixture: real-photo crops)

SIZE = 96  # Lite0's last layer at 3 x 3: enough to tell a picture's halves apart
GRADIENT_METHODS = ("gradcam", "hirescam", "xgradcam", "gradcam++", "layercam")


def _tiny_binary(separate_sigmoid: bool = False) -> keras.Model:
    """A small CNN ending in one sigmoid unit (or a linear unit and a sigmoid layer, as
    `as_probabilities` wraps a logit model), its Dense scaled so ``p`` rounds to 0 or 1."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D(name="gap")(x))
    dense = layers.Dense(1, activation=None if separate_sigmoid else "sigmoid", name="predictions")
    out = dense(x)
    if separate_sigmoid:
        out = layers.Activation("sigmoid", name="kerascope_sigmoid")(out)
    kernel = np.linspace(-1.0, 1.0, 8, dtype=np.float32)[:, None] * 2000.0
    dense.set_weights([kernel, np.array([3.0], np.float32)])
    return keras.Model(inputs, out, name="tiny_binary")


def _pixels(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("separate_sigmoid", [False, True])
def test_head_of_the_two_class_view_is_the_signed_logit(separate_sigmoid):
    """The head behind ``[1 - p, p]`` is the Dense with kernel ``[-W, W]`` and bias ``[-b, b]``
    under a sigmoid (closed form, as the seed's GAP + Dense); its scores are ``[-z, z]`` and
    its probabilities the model's rows."""
    base = _tiny_binary(separate_sigmoid)
    clf = as_classifier(two_class_view(base))
    probe = get_probe(clf, "conv1")
    head = probe.head
    w, b = base.get_layer("predictions").get_weights()
    assert head.kind == "dense" and head.activation == "sigmoid" and head.analytic
    np.testing.assert_array_equal(head.kernel, np.concatenate([-w, w], axis=1))
    np.testing.assert_array_equal(head.bias, [-b[0], b[0]])
    pixels = _pixels()
    pooled = keras.Model(base.inputs, base.get_layer("predictions").input)
    z = pooled.predict(pixels, verbose=0) @ w + b
    logits = probe.logits(pixels)
    np.testing.assert_allclose(logits, np.concatenate([-z, z], axis=1), rtol=1e-4, atol=1e-3)
    rows = clf.model.predict(pixels, verbose=0)
    assert set(np.unique(rows)) <= {0.0, 1.0}  # saturated: the probabilities carry no gradient
    _, probs = probe.scores(probe._model("logits", head.score_input).predict(pixels, verbose=0))
    np.testing.assert_allclose(probs, rows, atol=1e-6)


def test_every_path_maps_a_saturated_binary_head(monkeypatch):
    """Closed form, autodiff and the device function give the same non-empty maps for both
    classes of a model whose ``p`` is exactly 0 or 1, class 0's map ReLU(-M) where class 1's
    is ReLU(M); CAM equals Grad-CAM."""
    clf = as_classifier(two_class_view(_tiny_binary()))
    pixels = _pixels()
    for target in (0, 1):
        maps = {}
        for analytic in (None, False):
            ex = Explainer(clf, "gradcam", layer="conv1", analytic=analytic, precision="float32")
            maps[analytic], classes, _ = ex.explain_batch(pixels, target)
            assert (classes == target).all()
        np.testing.assert_allclose(maps[None], maps[False], atol=1e-4)
        cam, _, _ = Explainer(clf, "cam", layer="conv1").explain_batch(pixels, target)
        np.testing.assert_allclose(cam, maps[None], atol=1e-4)
        assert np.allclose(maps[None].max(axis=(1, 2)), 1.0)  # not one empty map
    zero, _, _ = Explainer(clf, "gradcam", layer="conv1").cam.raw_maps(pixels, np.zeros(4, int))
    one, _, _ = Explainer(clf, "gradcam", layer="conv1").cam.raw_maps(pixels, np.ones(4, int))
    assert not (zero * one).any()  # opposite signs: disjoint supports after the ReLU
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    fresh = as_classifier(two_class_view(_tiny_binary()))
    device = Explainer(fresh, "gradcam", layer="conv1", precision="float32")
    assert device.on_device
    for target, raw in ((0, zero), (1, one)):
        maps, _, _ = device.explain_batch(pixels, target)
        np.testing.assert_allclose(maps, normalise(raw), atol=1e-4)


# --- a real binary run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confident_run(two, tmp_path_factory):  # noqa: F811
    """`train --binary` at a high rate (the tester's --lr 0.05; 0.1 since the head starts at
    zero, where 0.05 left p = 1.6e-33 on the cat): |z| near 100 on the crops, so float32
    rounds ``p`` to exactly 0 or 1. ~8 s on 2 cores."""
    out = tmp_path_factory.mktemp("binary_cam") / "run"
    return train(two, recipe="transfer", output=out, epochs=4, lr=0.1, binary=True,
                 image_size=SIZE, batch_size=16, augment=False, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def halves(skimage_data) -> np.ndarray:
    """Grey photos as the run was trained on: [cat | coffee], its mirror, and each whole."""
    from PIL import Image, ImageOps

    def grey(name: str) -> np.ndarray:
        with Image.open(skimage_data / name) as img:
            photo = ImageOps.grayscale(img).convert("RGB")
        w, h = photo.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return np.asarray(photo.crop(box).resize((SIZE, SIZE), Image.BILINEAR))

    cat, coffee = grey("chelsea.png"), grey("coffee.png")
    q = SIZE // 4
    half = np.concatenate([cat[:, q : q + 2 * q], coffee[:, q : q + 2 * q]], axis=1)
    return np.stack([half, half[:, ::-1], cat, coffee])


def _sides(maps: np.ndarray) -> np.ndarray:
    """(N, 2): each map's mean over its left and its right half."""
    mid = maps.shape[2] // 2
    return np.stack([maps[:, :, :mid].mean(axis=(1, 2)), maps[:, :, mid:].mean(axis=(1, 2))], 1)


def test_gradcam_of_a_confident_binary_run_finds_each_class(confident_run, halves):
    """The whole photos, predicted at exactly 100 % (float32 rounds ``p`` to 0 and 1), get a
    map of their class, where before it was empty. On [cat | coffee] each class's map lies on
    its own half (the mirror swaps them) with opposite signs; closed form and autodiff agree."""
    from kerascope.zoo.models import load_model

    clf = load_model(confident_run.run_dir)
    assert [name for _, name in clf.labels] == ["cat", "coffee"]
    rows = clf.model.predict(halves.astype("float32"), verbose=0)
    np.testing.assert_array_equal(rows[2:], [[1.0, 0.0], [0.0, 1.0]])  # the case that failed
    sides = {}
    for analytic in (None, False):
        ex = Explainer(clf, "gradcam", analytic=analytic)
        maps, classes, probs = ex.explain_batch(halves[2:])
        assert classes.tolist() == [0, 1] and probs.tolist() == [1.0, 1.0]
        assert np.allclose(maps.max(axis=(1, 2)), 1.0)  # each photo's own class: not empty
        small = {}
        for target in (0, 1):
            small[target], classes, probs = ex.explain_batch(halves[:2], target)
            assert (classes == target).all()
            assert np.allclose(small[target].max(axis=(1, 2)), 1.0)  # neither class empty
            np.testing.assert_allclose(probs, rows[:2, target], atol=2e-5)
            maps, _, _ = ex.explain_batch(halves[:2], target, upsample=True)
            sides[analytic, target] = _sides(maps)
        assert not (small[0] * small[1]).any()  # ReLU(-M) and ReLU(M): signed opposite
        np.testing.assert_allclose(sides[analytic, 0], sides[None, 0], atol=1e-3)
    cat, coffee = sides[None, 0], sides[None, 1]
    assert cat[0, 0] > cat[0, 1] and coffee[0, 1] > coffee[0, 0]  # [cat | coffee]
    assert cat[1, 1] > cat[1, 0] and coffee[1, 0] > coffee[1, 1]  # mirrored


def test_cam_explains_the_binary_run_as_gradcam(confident_run, halves, tmp_path, capsys):
    """CAM reads the saved Dense(1): class 1's weights are its kernel, class 0's the negative,
    and its maps are Grad-CAM's (GAP -> Dense: the gradient is W / Z everywhere). The CLI
    explains with --method cam instead of refusing."""
    from kerascope.cli import main
    from kerascope.zoo.models import load_model

    clf = load_model(confident_run.run_dir)
    saved = keras.saving.load_model(confident_run.model_path, compile=False)
    w = saved.get_layer("predictions").get_weights()[0]
    cam = Explainer(clf, "cam")
    np.testing.assert_array_equal(cam.cam.channel_weights(None, None, np.array([1, 0])),
                                  np.stack([w[:, 0], -w[:, 0]]))  # fmt: skip
    for target in (0, 1):
        ours, _, _ = cam.explain_batch(halves, target)
        grad, _, _ = Explainer(clf, "gradcam", analytic=False).explain_batch(halves, target)
        np.testing.assert_allclose(ours, grad, atol=1e-4)
    from PIL import Image

    path = tmp_path / "half.png"
    Image.fromarray(halves[0]).save(path)
    for method in ("cam", "gradcam"):
        code = main(["explain", str(path), "--model", str(confident_run.run_dir), "--method",
                     method, "--class", "cat", "-o", str(tmp_path / method)])  # fmt: skip
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "empty map" not in out.out + out.err


def test_other_methods_follow_the_signed_logit(confident_run, halves):
    """The gradient methods and Ablation-CAM give each class a non-empty map of its own half;
    the score the masking methods read (Score-CAM's) is the signed logit, not a probability
    pinned at 0 or 1."""
    from kerascope.zoo.models import load_model

    clf = load_model(confident_run.run_dir)
    for method in (*GRADIENT_METHODS, "ablationcam"):
        ex = Explainer(clf, method)
        cat, _, _ = ex.explain_batch(halves[:1], 0, upsample=True)
        coffee, _, _ = ex.explain_batch(halves[:1], 1, upsample=True)
        assert cat.max() == coffee.max() == 1.0, method
        (cat_left, cat_right), (coffee_left, coffee_right) = _sides(cat)[0], _sides(coffee)[0]
        assert cat_left > cat_right and coffee_right > coffee_left, method
    saved = keras.saving.load_model(confident_run.model_path, compile=False)
    dense = saved.get_layer("predictions")
    pooled = keras.Model(saved.inputs, dense.input).predict(halves, verbose=0)
    z = pooled @ dense.get_weights()[0] + dense.get_weights()[1]  # the sigmoid's logit
    logits = get_probe(clf, None).logits(halves)
    np.testing.assert_allclose(logits, np.concatenate([-z, z], axis=1), rtol=1e-3, atol=1e-3)
    assert np.abs(z[2:]).min() > 20  # the whole photos: a score where p is pinned at 0 or 1


def test_as_probabilities_then_two_classes_keeps_the_logit(tmp_path):
    """A saved Dense(1) without activation (trained from logits) loads as sigmoid + the two-class
    view; explain still reaches the Dense's logit in closed form."""
    from kerascope.zoo.models import load_model

    base = _tiny_binary(separate_sigmoid=True)
    plain = keras.Model(base.inputs, base.get_layer("predictions").output, name="logit_run")
    plain.save(tmp_path / "model.keras")
    Path(tmp_path / "labels.json").write_text('["cat", "coffee"]')
    clf = load_model(tmp_path)
    assert clf.num_classes == 2
    ex = Explainer(clf, "cam", layer="conv1")
    assert ex.cam.probe.head.analytic
    maps, classes, _ = ex.explain_batch(_pixels(), 1)
    assert (classes == 1).all() and np.allclose(maps.max(axis=(1, 2)), 1.0)
