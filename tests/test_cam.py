"""Heatmaps: layer finding, methods and their identities, the explain API, memory, the zoo."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kerascope.cam import CAM, GradCAM, GradCAMPlusPlus, LayerError, MethodError, find_layer
from kerascope.cam.explain import Explainer, Explanation, explain, resolve_target
from kerascope.cam.graph import candidate_layers

from .conftest import load_rgb


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _tiny(head: str = "gap", classes: int = 5, size: int = 32, seed: int = 0):
    """A small random CNN; ``head``: gap (GAP -> Dropout -> Dense softmax) or flatten."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        x = layers.Dropout(0.3)(x)
    else:
        x = layers.Flatten()(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{head}")


def _pixels(n: int, size: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- the target layer -------------------------------------------------------------------------


def test_finds_last_spatial_layer_and_names_candidates_on_a_typo():
    model = _tiny()
    assert find_layer(model).name == "conv2"
    maps = Explainer(model, "gradcam", layer="conv1").explain_batch(_pixels(1))[0]
    assert maps.shape == (1, 32, 32)
    with pytest.raises(LayerError, match=r"no layer 'conv3' \(did you mean conv2, conv1\?\)"):
        Explainer(model, "gradcam", layer="conv3")
    with pytest.raises(LayerError, match=r"'gap' has output shape \(None, 16\)"):
        Explainer(model, "gradcam", layer="gap")


def test_layer_inside_a_nested_base_model():
    import keras

    base = _tiny()
    base = keras.Model(base.input, base.get_layer("conv2").output, name="base")
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    assert find_layer(model).name == "conv2"  # inside the base, not the base itself
    fast = Explainer(model, "gradcam")
    assert fast.cam.analytic  # GAP + Dense after the nested base's output
    maps, classes, probs = fast.explain_batch(_pixels(3))
    slow, slow_classes, slow_probs = Explainer(model, "gradcam", analytic=False).explain_batch(
        _pixels(3)
    )
    assert maps.shape == (3, 16, 16) and np.isfinite(maps).all()
    assert (classes == slow_classes).all() and np.allclose(probs, slow_probs, atol=1e-5)
    assert all(_corr(a, b) > 0.999 for a, b in zip(maps, slow, strict=True))
    expected = model.predict(_pixels(3).astype("float32"), verbose=0)
    assert np.allclose(probs, expected[np.arange(3), classes], atol=1e-5)
    # A layer of the base that the head does not follow directly: autodiff, still works.
    inner = Explainer(model, "gradcam", layer="conv1")
    assert not inner.cam.analytic and inner.explain_batch(_pixels(1))[0].shape == (1, 32, 32)


def _ensemble():
    """Two branches of one zoo network (identical inner layer names) behind in-graph resizes,
    each wrapped under its own name as ``bottleneck.build_body`` does; random weights, seeded
    (the same every session: compiled functions come from the JAX compilation cache)."""
    import keras

    from kerascope.zoo.models import build

    keras.utils.set_random_seed(0)

    inputs = keras.Input((96, 96, 3), name="image")
    branches = []
    for size in (64, 80):
        base = build("efficientnet_lite0", weights=None, include_top=False, pooling="avg",
                     input_shape=(size, size, 3))  # fmt: skip
        body = keras.Model(base.input, base.output, name=f"lite0_{size}")
        branches.append(body(keras.layers.Resizing(size, size, name=f"resize_{size}")(inputs)))
    x = keras.layers.Concatenate(name="concat")(branches)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="ensemble")


@pytest.mark.slow  # 16 s
def test_ensemble_with_same_named_layers_in_two_branches():
    """Only the branch holding the target is inlined; the other is called whole."""
    model = _ensemble()
    pixels = _pixels(2, 96)
    expected = model.predict(pixels.astype("float32"), verbose=0)
    auto = Explainer(model, "gradcam")
    given = Explainer(model, "gradcam", layer="lite0_64/conv_head_relu6")
    inner = Explainer(model, "gradcam++", layer="lite0_64/conv_stem_relu6")
    for ex, size in ((auto, 3), (given, 2), (inner, 32)):  # lite0 strides 32, stem 2
        maps, classes, probs = ex.explain_batch(pixels)
        assert maps.shape == (2, size, size) and np.isfinite(maps).all()
        assert np.allclose(probs, expected[np.arange(2), classes], atol=1e-5)
    assert auto.layer == "conv_head_relu6" and given.layer == "lite0_64/conv_head_relu6"
    assert find_layer(model, "conv_head_relu6") is find_layer(model, "lite0_80/conv_head_relu6")
    with pytest.raises(LayerError, match="no layer 'nope'"):
        find_layer(model, "lite0_64/nope")
    # names the branches share are listed with their branch, so each picks one layer
    # (before: "conv_head_relu6" once, which always meant the last branch)
    listed = candidate_layers(model)
    assert {"lite0_64/conv_head_relu6", "lite0_80/conv_head_relu6"} <= set(listed)
    assert "conv_head_relu6" not in listed and "resize_64" in listed  # unique: plain
    assert find_layer(model, listed[1]) is not find_layer(model, listed[0])
    with pytest.raises(LayerError) as err:
        find_layer(model, "conv_head_relu")
    meant = str(err.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert {"lite0_64/conv_head_relu6", "lite0_80/conv_head_relu6"} <= set(meant)


# --- methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_analytic_head_equals_autodiff_on_a_random_gap_dense_model(method):
    model = _tiny()
    pixels = _pixels(4)
    fast, c1, p1 = Explainer(model, method).explain_batch(pixels)
    slow, c2, p2 = Explainer(model, method, analytic=False).explain_batch(pixels)
    assert (c1 == c2).all() and np.allclose(p1, p2, atol=1e-5)
    assert all(_corr(a, b) >= 0.999 for a, b in zip(fast, slow, strict=True))


def test_cam_equals_gradcam_up_to_normalisation():
    """On GAP + Dense, Grad-CAM's weights are W[:, c] / (h*w): CAM scaled by 1/(h*w)."""
    model = _tiny()
    pixels = _pixels(4)
    targets = np.array([0, 1, 2, 3])
    cam, _, _ = CAM(model).raw_maps(pixels, targets)
    grad, _, _ = GradCAM(model, analytic=False).raw_maps(pixels, targets)  # real gradients
    assert np.allclose(cam, grad * 16 * 16, rtol=1e-3, atol=1e-6 * cam.max())
    a = CAM(model).explain_batch(pixels, targets)[0]
    b = GradCAM(model, analytic=False).explain_batch(pixels, targets)[0]
    assert np.allclose(a, b, atol=1e-4)


def test_cam_refuses_a_head_without_global_average_pooling():
    model = _tiny(head="flatten")
    with pytest.raises(MethodError, match="GlobalAveragePooling2D -> Dense.*use gradcam"):
        CAM(model)
    maps, _, _ = GradCAMPlusPlus(model).explain_batch(_pixels(2))  # autodiff covers it
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_targets_are_honoured_and_checked():
    model = _tiny()
    ex = Explainer(model, "gradcam")
    _, classes, probs = ex.explain_batch(_pixels(3), targets=[4, 0, 2])
    assert classes.tolist() == [4, 0, 2]
    full = model.predict(_pixels(3).astype("float32"), verbose=0)
    assert np.allclose(probs, full[[0, 1, 2], [4, 0, 2]], atol=1e-5)
    assert ex.explain_batch(_pixels(2), targets=1)[1].tolist() == [1, 1]
    with pytest.raises(ValueError, match="outside 0..4"):
        ex.explain_batch(_pixels(1), targets=9)
    with pytest.raises(ValueError, match="shape"):
        ex.explain_batch(_pixels(1, size=16))


def test_class_names_resolve_for_imagenet_and_trained_models(lite0):
    from kerascope.zoo.models import Classifier

    assert resolve_target(lite0, "tabby") == 281
    assert resolve_target(lite0, "n02123045") == 281 == resolve_target(lite0, 281)
    with pytest.raises(ValueError, match="unknown ImageNet class 'tabbby'.*did you mean"):
        resolve_target(lite0, "tabbby")
    trained = Classifier(_tiny(classes=2), "pets", (32, 32), [("0", "cat"), ("1", "dog")])
    assert resolve_target(trained, "Dog") == 1 == resolve_target(trained, "1")
    with pytest.raises(ValueError, match="unknown class 'horse'.*cat, dog"):
        resolve_target(trained, "horse")


# --- behaviour on real photos -----------------------------------------------------------------


@pytest.mark.backends
def test_gradcam_peak_lies_on_the_cat_face(lite0, photo_paths):
    e = explain(str(photo_paths["chelsea"]), model=lite0)
    assert isinstance(e, Explanation) and e.ok
    assert e.class_name in {"tabby", "tiger_cat", "Egyptian_cat"} and 0 < e.probability <= 1
    assert e.heatmap.shape == (300, 451) and e.heatmap.dtype == np.float32
    assert e.heatmap.min() >= 0 and e.heatmap.max() == pytest.approx(1.0, abs=1e-3)
    y, x = np.unravel_index(e.heatmap.argmax(), e.heatmap.shape)
    # chelsea.png is filled by the face: eyes at about (170, 115) and (320, 135) (x, y), nose
    # at (260, 245); the box spans them with margin, leaving out the ears, chest and background.
    assert 90 <= x <= 380 and 30 <= y <= 280, (x, y)


def test_space_shuttle_in_the_astronaut_photo_is_top_right(lite0, photo_paths):
    for method in ("gradcam", "gradcam++"):
        e = explain(str(photo_paths["astronaut"]), lite0, method, target="space shuttle")
        assert e.class_name == "space_shuttle" and e.class_id == "n04266014"
        m = e.heatmap
        h, w = m.shape
        quarters = {
            "top-left": m[: h // 2, : w // 2].sum(),
            "top-right": m[: h // 2, w // 2 :].sum(),
            "bottom-left": m[h // 2 :, : w // 2].sum(),
            "bottom-right": m[h // 2 :, w // 2 :].sum(),
        }
        y, x = np.unravel_index(m.argmax(), m.shape)
        assert y < h // 2 and x >= w // 2, (method, y, x)  # the peak: on the shuttle
        if method == "gradcam":  # Grad-CAM++ also spreads over the suit: on the whole picture
            # (--fit whole, the default) its bottom-right quarter sums as much (40.5k vs 40.4k)
            assert max(quarters, key=quarters.get) == "top-right", (method, quarters)


@pytest.mark.slow
def test_analytic_head_equals_autodiff_on_lite0(lite0, photo_paths):
    pixels = np.stack([load_rgb(photo_paths[k], 224) for k in ("chelsea", "rocket")])
    for method in ("gradcam", "gradcam++"):
        fast = Explainer(lite0, method)
        assert fast.cam.analytic and fast.layer == "conv_head_relu6"
        a, c1, p1 = fast.explain_batch(pixels)
        b, c2, p2 = Explainer(lite0, method, analytic=False).explain_batch(pixels)
        assert (c1 == c2).all() and np.allclose(p1, p2, atol=1e-4)
        assert all(_corr(x, y) >= 0.999 for x, y in zip(a, b, strict=True)), method


_OTHER_BACKEND = """
import sys, numpy as np
from kerascope.cam.explain import Explainer
from kerascope.images import load_image, resize
from kerascope.zoo.models import load_model
pixels = resize(load_image(sys.argv[1]), (224, 224))[None]
maps, classes, _ = Explainer(load_model("efficientnet_lite0"), "gradcam", analytic=False
                             ).explain_batch(pixels)
np.save(sys.argv[2], maps[0]); print(int(classes[0]))
"""


@pytest.mark.slow
@pytest.mark.backends
def test_same_heatmap_on_jax_and_torch(lite0, photo_paths, tmp_path):
    """Gradients by autodiff in this process and on the other backend in a subprocess."""
    import keras

    here = keras.backend.backend()
    other = "torch" if here == "jax" else "jax"
    path = str(photo_paths["chelsea"])
    ours, classes, _ = Explainer(lite0, "gradcam", analytic=False).explain_batch(
        load_rgb(photo_paths["chelsea"], 224)[None]
    )
    out = tmp_path / f"{other}.npy"
    env = {**os.environ, "KERAS_BACKEND": other}
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND, path, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) == int(classes[0])
    assert _corr(ours[0], np.load(out)) >= 0.99


# --- the explain API --------------------------------------------------------------------------


def test_explain_mirrors_classify_on_lists_and_bad_files(lite0, photo_paths, tmp_path):
    import kerascope

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    inputs = [str(photo_paths["coffee"]), str(broken), str(tmp_path / "missing.png")]
    results = explain(inputs, model=lite0, target=["espresso", 0], batch_size=2)
    # One target per image found; missing inputs keep their place, as in classify.
    assert [r.ok for r in results] == [True, False, False]
    ok = results[0]
    assert ok.source == inputs[0] and ok.class_name == "espresso"
    assert ok.heatmap.shape == load_rgb(photo_paths["coffee"]).shape[:2]
    assert "not an image" in results[1].error and results[1].heatmap is None
    single = kerascope.explain(load_rgb(photo_paths["coffee"]), model=lite0, method="cam")
    assert isinstance(single, Explanation) and single.class_index == ok.class_index
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        explain(inputs[0], model=lite0, method="lime")
    with pytest.raises(ValueError, match="unknown ImageNet class"):
        explain(inputs[0], model=lite0, target="unicorn")


# --- resources --------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.slow
def test_memory_stays_flat_and_nothing_recompiles(lite0, photo_paths):
    import keras

    pixels = np.stack([load_rgb(p, 224) for p in photo_paths.values()] * 5)  # 20 images
    fast = Explainer(lite0, "gradcam++")
    tiny = Explainer(_tiny(), "gradcam", analytic=False)
    small = _pixels(20)
    for _ in range(3):  # warm-up: sessions, compilation, allocator pools
        fast.explain_batch(pixels)
        tiny.explain_batch(small)
        tiny.explain_batch(small[:7])
    traces, before = tiny.cam.probe.traces(), _rss_mb()
    for i in range(25):  # 500 images each
        fast.explain_batch(pixels, targets=i)
        tiny.explain_batch(small)
        tiny.explain_batch(small[: 5 + i % 3])  # ragged batches pad to the same bucket
    grown = _rss_mb() - before
    assert grown < 150, f"resident memory grew by {grown:.0f} MB over 500 images"
    if keras.backend.backend() == "jax":
        assert tiny.cam.probe.traces() == traces == 2  # batch 20 (-> 32) and 5..7 (-> 8)
    explain(str(photo_paths["chelsea"]), model=lite0)
    cached = lite0.extra["explainers"][("gradcam", None)]
    explain(str(photo_paths["chelsea"]), model=lite0)
    assert lite0.extra["explainers"][("gradcam", None)] is cached  # built once, reused
    probe = lite0.extra["cam_probes"]["conv_head_relu6"]
    assert fast.cam.probe is probe is cached.cam.probe  # one per layer, shared by every method


# --- every zoo family, structurally -----------------------------------------------------------

ZOO = [
    ("vgg16", 64),
    ("resnet50", 64),
    ("mobilenet_v2", 64),
    ("densenet121", 64),
    ("efficientnet_b0", 64),
    ("convnext_tiny", 64),
    ("inception_v3", 75),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), ZOO, ids=[n for n, _ in ZOO])
def test_every_zoo_family_gives_a_finite_map(name, size, numpy_init):
    import keras

    from kerascope.zoo import registry
    from kerascope.zoo.models import Classifier, build

    spec = registry.get(name)
    keras.utils.set_random_seed(0)  # the same weights every session: cached compilations
    model = build(name, weights=None, input_shape=(size, size, 3))
    labels = [(str(i), str(i)) for i in range(1000)]
    clf = Classifier(model, name, (size, size), labels, cam_layer=spec.cam_layer)
    ex = Explainer(clf, "gradcam")
    assert ex.layer == spec.cam_layer
    maps, classes, probs = ex.explain_batch(_pixels(2, size))
    fh, fw = model.get_layer(ex.layer).output.shape[1:3]
    assert maps.shape == (2, fh, fw) and np.isfinite(maps).all() and (maps <= 1).all()
    assert np.isfinite(probs).all() and ((classes >= 0) & (classes < 1000)).all()
    if name == "mobilenet_v2":  # the same base nested in a new head, auto-detected layer
        base = build(name, weights=None, input_shape=(size, size, 3), include_top=False)
        nested = keras.Sequential(
            [
                keras.Input((size, size, 3)),
                base,
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        inner = Explainer(nested, "gradcam++")
        assert inner.layer == "out_relu" and inner.cam.analytic
        assert np.isfinite(inner.explain_batch(_pixels(2, size))[0]).all()


def test_explain_batch_reads_dtypes_as_explain_does(lite0, photo_paths):
    """Before: a float batch in [0, 1] was rounded to black (a matchstick), uint16 read as
    0..255 (a nematode), NaN explained; now the rules of `kerascope.explain`'s arrays."""
    from kerascope.cam.explain import Explainer

    x = load_rgb(photo_paths["chelsea"], 224)[None]
    explainer = Explainer(lite0, "gradcam")
    maps, classes, probs = explainer.explain_batch(x)
    for same in (x / 255.0, x.astype(np.float32), x.astype(np.uint16) * 257):
        m, c, p = explainer.explain_batch(same)
        assert int(np.asarray(c)[0]) == int(np.asarray(classes)[0])
        np.testing.assert_allclose(np.asarray(p), np.asarray(probs), atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        explainer.explain_batch(np.full(x.shape, np.nan))
    # one scale for the batch: a near-black frame among 0..255 floats stays near black
    from kerascope.cam.base import model_pixels

    frames = np.stack([np.full(x.shape[1:], 200.0), np.full(x.shape[1:], 0.8)])
    assert model_pixels(lite0, frames).reshape(2, -1).max(axis=1).tolist() == [200, 1]
    assert model_pixels(lite0, np.full(x.shape, 255.3)).max() == 255  # an overshoot: clipped


def test_explain_batch_names_a_wrong_target_and_explainer_takes_a_name(lite0, photo_paths):
    """Before: targets=2.7 explained class 2 in silence, two targets for one image a NumPy
    broadcast error, 'tabby' "invalid literal for int()"; Explainer("efficientnet_lite0")
    "'str' object has no attribute 'input_shape'"."""
    from kerascope.cam.explain import Explainer

    x = load_rgb(photo_paths["chelsea"], 224)[None]
    explainer = Explainer(lite0, "gradcam")
    assert np.asarray(explainer.explain_batch(x, targets=[285])[1]).tolist() == [285]
    for targets, said in (([281, 282], "2 targets for 1 image"), ("tabby", "class indices"),
                          (2.7, "class indices")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            explainer.explain_batch(x, targets=targets)
    assert Explainer("efficientnet_lite0", "gradcam").clf.name == lite0.name
    with pytest.raises(TypeError, match="a model is a Classifier"):
        Explainer(None, "gradcam")


def test_explanation_save_reads_images_as_explain_and_never_replaces_its_photo(
    lite0, photo_paths, tmp_path
):
    """Before: save(image=float [0, 1]) drew a black picture, save("cat.png") of cat.png
    replaced the photo with a JPEG, and every name got JPEG bytes."""
    import shutil

    from PIL import Image

    import kerascope
    from kerascope.files import OutputError

    photo = tmp_path / "cat.png"
    shutil.copy(photo_paths["chelsea"], photo)
    before = photo.read_bytes()
    e = kerascope.explain(str(photo), model=lite0)
    with pytest.raises(OutputError, match="is one of the inputs"):
        e.save(photo)
    with pytest.raises(ValueError, match="save writes .jpg, .jpeg or .png"):
        e.save(tmp_path / "cat.gif")
    assert photo.read_bytes() == before
    with Image.open(e.save(tmp_path / "out.png")) as png:
        assert png.format == "PNG"
        width = png.size[0]
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    floats = pixels.astype(np.float32) / 255
    with Image.open(e.save(tmp_path / "float.jpg", image=floats)) as drawn:
        original_half = np.asarray(drawn.convert("RGB"))[-pixels.shape[0] :, : width // 2]
    assert np.abs(original_half.astype(int) - pixels).mean() < 4  # the photo, not black
    assert e.overlay(pixels[..., 0]).shape == pixels.shape  # grey (H, W), as explain reads it
