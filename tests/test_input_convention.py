"""The weights' input convention (squash or centre crop), one build path, ``input_tensor``.

The reference for EfficientNet-Lite is the PyTorch port on the packaged ``.pth`` weights, fed as
the TF reference evaluates (efficientnet/preprocessing.py: a centre crop of
``size / (size + 32)`` of the shorter side, bicubic to ``size``, then ``(x - 127) / 128``).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.images import fit, load_image, resize
from kerascope.zoo import registry
from kerascope.zoo.registry import InputConvention

CROP = InputConvention("crop", 0.875)


def _two_step_crop(image: np.ndarray, size: int, fraction: float) -> np.ndarray:
    """Shorter side to size / fraction, then the centre: what ``fit`` does in one step."""
    h, w = image.shape[:2]
    scale = size / fraction / min(h, w)
    big = resize(image, (round(h * scale), round(w * scale)))
    top, left = (big.shape[0] - size) // 2, (big.shape[1] - size) // 2
    return big[top : top + size, left : left + size]


def test_crop_is_the_centre_at_the_shorter_side_scale(chelsea):
    """chelsea is 451x300: the crop keeps the cat's centre at the 256-px scale; squash does not."""
    two_step = _two_step_crop(chelsea, 224, 0.875).astype(np.float32)

    def distance(convention) -> float:
        return float(np.abs(fit(chelsea, (224, 224), convention) - two_step).mean())

    assert fit(chelsea, (224, 224), CROP).shape == (224, 224, 3)
    # Two resamplings and a whole-pixel crop offset against one: a few grey levels apart; any
    # other scale or the squash is far off (measured 3.5 here, over 20 for the others).
    ours = distance(CROP)
    assert ours < 5.0
    for other in (None, InputConvention("crop", 1.0), InputConvention("crop", 0.8)):
        assert distance(other) > 4 * ours


def test_crop_of_the_whole_square_is_a_plain_resize(skimage_data):
    astronaut = load_image(skimage_data / "astronaut.png")  # 512x512
    assert np.array_equal(fit(astronaut, (224, 224), InputConvention("crop", 1.0)),
                          resize(astronaut, (224, 224)))  # fmt: skip
    assert np.array_equal(fit(astronaut, (224, 224)), resize(astronaut, (224, 224)))


def test_crop_to_a_wide_input_and_bad_conventions(chelsea):
    wide = fit(chelsea, (120, 200), CROP)
    assert wide.shape == (120, 200, 3)
    with pytest.raises(ValueError, match="crop_fraction"):
        fit(chelsea, (64, 64), InputConvention("crop", 1.5))
    with pytest.raises(ValueError, match="resize mode 'stretch'"):
        fit(chelsea, (64, 64), InputConvention("stretch"))


def test_lite_specs_carry_the_tf_eval_crop_and_their_normalisation():
    for variant, size in [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)]:
        spec = registry.get(variant)
        assert spec.preprocess == "lite"
        assert spec.weights.convention == InputConvention("crop", size / (size + 32), "bicubic")


def _tf_eval_reference(images: list[np.ndarray], size: int = 224) -> np.ndarray:
    """Probabilities of the PyTorch Lite0 on the TF reference's eval crop and resize."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    import torch.nn.functional as F

    from kerascope.zoo.weights import package_file

    net = reference.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(package_file(registry.get("efficientnet_lite0")), map_location="cpu")
    net.load_state_dict(state)
    net.eval()
    batch = []
    for image in images:
        h, w = image.shape[:2]
        crop = int(size / (size + 32) * min(h, w))
        top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
        patch = torch.from_numpy(image[top : top + crop, left : left + crop].astype(np.float32))
        resized = F.interpolate(patch.permute(2, 0, 1)[None], (size, size), mode="bicubic")
        batch.append(resized.clamp(0, 255))
    with torch.no_grad():
        return torch.softmax(net((torch.cat(batch) - 127.0) / 128.0), 1).numpy()


@pytest.mark.slow  # 21 s
def test_lite0_under_its_convention_agrees_with_the_reference_pipeline(lite0, photo_paths,
                                                                       skimage_data):  # fmt: skip
    """Top-1 agrees with the reference on every photo whose reference answer is clear (top two
    classes over 0.1 apart; near-ties flip with the resampling filter), and the probabilities
    are closer to it than under squash."""
    from kerascope.classification import classify

    extra = ["motorcycle_left.png", "motorcycle_right.png", "camera.png", "clock_motion.png"]
    paths = [*photo_paths.values(), *(skimage_data / n for n in extra)]
    images = [load_image(p) for p in paths]
    reference = _tf_eval_reference(images)
    results = classify(paths, model=lite0, top=1000)
    ours = np.zeros_like(reference)
    for row, result in zip(ours, results, strict=True):
        for p in result.predictions:
            row[p.index] = p.probability
    squash = np.stack([r for r in _squash_probabilities(lite0, images)])
    top2 = np.sort(reference, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1
    assert clear.sum() >= 4
    assert (ours.argmax(1) == reference.argmax(1))[clear].all()
    distance = 0.5 * np.abs(ours - reference).sum(1).mean()
    assert distance < 0.75 * 0.5 * np.abs(squash - reference).sum(1).mean()


def _squash_probabilities(clf, images: list[np.ndarray]) -> np.ndarray:
    from kerascope.inference import compiled

    return compiled(clf.model)(np.stack([fit(im, clf.input_size) for im in images]))


def test_classify_fits_with_the_classifier_convention(lite0, photo_paths):
    """classify = forward(fit(image, convention)); explain-style squash gives other numbers."""
    from kerascope.classification import classify
    from kerascope.inference import compiled
    from kerascope.sources import iter_batches

    assert lite0.convention == registry.get("efficientnet_lite0").weights.convention
    path = photo_paths["chelsea"]
    (result,) = classify([path], model=lite0, top=1000)
    probs = np.zeros(1000, np.float32)
    for p in result.predictions:
        probs[p.index] = p.probability
    forward = compiled(lite0.model)
    cropped = fit(load_image(path), (224, 224), lite0.convention)
    assert np.abs(forward(cropped[None])[0] - probs).max() <= 1e-5
    (items,) = list(iter_batches([str(path)], (224, 224), 1))  # the default: whole picture
    assert np.array_equal(items[0].pixels, resize(load_image(path), (224, 224)))
    assert np.abs(forward(items[0].pixels[None])[0] - probs).max() > 1e-3


def test_serve_uploads_fit_with_the_given_convention(photo_paths):
    from kerascope.serve.decode import decode_bytes
    from kerascope.serve.uploads import _prepare

    data = photo_paths["chelsea"].read_bytes()
    image = decode_bytes(data, None)
    cropped = _prepare("chelsea.png", data, (224, 224), False, CROP, None)
    whole = _prepare("chelsea.png", data, (224, 224), True, None, 0)  # max_side 0: full size
    assert np.array_equal(cropped.pixels, fit(image, (224, 224), CROP))
    assert np.array_equal(whole.pixels, resize(image, (224, 224)))
    assert whole.original.shape == image.shape


# --- one build path, input_tensor ------------------------------------------------------------


def test_input_tensor_for_a_keras_application_as_in_the_guide():
    """The guide's example: the base model's input is the given tensor, preprocessing applied."""
    import keras

    from kerascope.zoo.models import build

    input_tensor = keras.Input(shape=(96, 96, 3))
    base = build("inception_v3", weights=None, input_tensor=input_tensor, include_top=False)
    assert base.inputs[0] is input_tensor and base.layers[1].name == "preprocess"
    assert base.layers[2].input is base.layers[1].output  # the network starts after it
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(input_tensor, keras.layers.Dense(3, activation="softmax")(x))
    assert model.output_shape == (None, 3) and base.output_shape == (None, 1, 1, 2048)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype("float32")
    preprocessed = keras.Model(input_tensor, base.layers[1].output)(pixels)
    assert np.allclose(keras.ops.convert_to_numpy(preprocessed), pixels / 127.5 - 1.0, atol=1e-6)


def test_input_tensor_for_lite0_with_real_weights(lite0, photo_paths):
    import keras

    from kerascope.inference import compiled
    from kerascope.zoo.models import build

    inputs = keras.Input(shape=(224, 224, 3), name="photo")
    model = build("efficientnet_lite0", input_tensor=inputs)
    assert model.inputs[0] is inputs and model.get_layer("preprocess").mode == "lite"
    batch = np.stack([fit(load_image(p), (224, 224)) for p in photo_paths.values()])
    ours = compiled(model)(batch)
    assert np.abs(ours - compiled(lite0.model)(batch)).max() <= 1e-6
    assert int(ours[0].argmax()) in (281, 282, 285)  # chelsea: a cat


def test_input_tensor_must_be_a_keras_tensor():
    from kerascope.zoo.models import build

    with pytest.raises(TypeError, match="input_tensor must be a Keras tensor"):
        build("efficientnet_lite0", weights=None, input_tensor=np.zeros((1, 224, 224, 3)))


def _old_lite0(new):
    """Lite0 as kerascope built it before the normalisation moved to the spec: Input "image" ->
    Rescaling "normalize" (1/128, -127/128) -> network, flat, as ``build`` returned it."""
    import keras

    from kerascope.zoo.efficientnet_lite import EfficientNetLite0

    inputs = keras.Input((224, 224, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    old = EfficientNetLite0(input_tensor=x)
    old.set_weights(new.get_weights())
    return old


@pytest.mark.slow  # 15 s
def test_models_and_weights_saved_the_old_way_still_load(lite0, photo_paths, tmp_path):
    from kerascope.inference import compiled
    from kerascope.zoo.models import build, load_model

    old = _old_lite0(lite0.model)
    old.save(tmp_path / "old_lite0.keras")
    old.save_weights(tmp_path / "old_lite0.weights.h5")
    loaded = load_model(tmp_path / "old_lite0.keras")
    rebuilt = build("efficientnet_lite0", weights=tmp_path / "old_lite0.weights.h5")
    assert "normalize" in {layer.name for layer in loaded.model.layers}
    assert loaded.convention == InputConvention()  # a saved model: squash, as it was trained
    x = np.stack([fit(load_image(p), (224, 224)) for p in photo_paths.values()])
    want = compiled(lite0.model)(x)
    assert np.abs(compiled(loaded.model)(x) - want).max() <= 1e-5
    assert np.abs(compiled(rebuilt)(x) - want).max() <= 1e-6


def test_lite_builders_take_the_keras_applications_signature():
    import inspect

    import keras

    from kerascope.zoo.efficientnet_lite import EfficientNetLite0

    ours = list(inspect.signature(EfficientNetLite0).parameters)
    keras_app = list(inspect.signature(keras.applications.EfficientNetB0).parameters)
    assert ours[:8] == [p for p in keras_app if p != "kwargs"][:8]
    model = EfficientNetLite0(include_top=False, pooling="avg", input_shape=(64, 64, 3))
    assert model.output_shape == (None, 1280) and model.name == "efficientnet_lite0"


def test_pil_images_fit_the_same_way(chelsea):
    """PIL Images go through the same fit (classify accepts them)."""
    from kerascope.sources import decode_item

    item = decode_item(Image.fromarray(chelsea), (224, 224), convention=CROP)
    assert item.error is None and np.array_equal(item.pixels, fit(chelsea, (224, 224), CROP))
