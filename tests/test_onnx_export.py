"""Keras -> ONNX conversion: onnxruntime must compute what ``model.predict`` computes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kerascope.onnx_export import UnsupportedLayerError, keras_to_onnx, supports

from .conftest import load_rgb

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    proto = keras_to_onnx(model)
    onnx.checker.check_model(onnx.load_from_string(proto))
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def _assert_matches(model, x, tol: float, relative: bool = False, expected=None) -> list:
    """ONNX outputs equal ``model.predict`` within ``tol`` (scaled by the output's magnitude);
    ``expected``: Keras's outputs when computed already (one compiled forward for several)."""
    expected = model.predict(x, verbose=0) if expected is None else expected
    expected = expected if isinstance(expected, list) else [expected]
    sess = _session(model)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    assert len(got) == len(expected)
    for e, o in zip(expected, got, strict=True):
        assert o.shape == e.shape
        scale = max(1.0, float(np.abs(e).max())) if relative else 1.0
        assert np.abs(o - e).max() <= tol * scale
    return got


def _images(size: int, photo_paths=None, n: int = 2, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels (as float32), plus the chelsea photo when given."""
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    if photo_paths is not None:
        images = np.concatenate([images, load_rgb(photo_paths["chelsea"], size)[None]])
    return images.astype("float32")


def _randomize_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial BN statistics, so that folding them into convolutions is really tested."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.1, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, shape))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.1, shape))


def _lite(variant: str):
    """The zoo model (its "lite" ImagePreprocess first) with the real ported weights."""
    from kerascope.zoo.models import build

    return build(variant)


@pytest.mark.slow
@pytest.mark.backends
@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1"])
def test_efficientnet_lite_with_real_weights(variant, photo_paths, request):
    """Lite1 runs at 240 px: odd sizes (15 -> 8) exercise TF's asymmetric "same" padding."""
    import keras

    # Lite0: the session's build (load_model is _lite's build with labels), not one more.
    lite0 = variant == "efficientnet_lite0"
    model = request.getfixturevalue("lite0").model if lite0 else _lite(variant)
    x = _images(model.input_shape[1], photo_paths)
    logits = keras.Model(model.input, model.get_layer("logits").output)
    # Keras's answers for both graphs from one compiled forward (the same layers and weights).
    both = keras.Model(model.input, [model.output, logits.output])
    keras_probabilities, keras_logits = both.predict(x, verbose=0)
    probabilities = _assert_matches(model, x, 1e-4, expected=keras_probabilities)[0]
    assert (probabilities.argmax(1) == keras_probabilities.argmax(1)).all()
    _assert_matches(logits, x, 1e-3, expected=keras_logits)


def test_lite_graph_is_lean(tmp_path):
    """One Transpose in, and after onnxruntime's basic optimizations (which fold BN and Pad into
    Conv) nothing but the 49 convolutions, their ReLU6 and the residual adds: torch's export."""
    from kerascope.zoo.models import build

    proto = keras_to_onnx(build("efficientnet_lite0", weights=None))  # "lite" preprocessing first
    ops = [n.op_type for n in onnx.load_from_string(proto).graph.node]
    assert ops.count("Conv") == 49 and ops.count("Transpose") == 1 and "Reshape" not in ops
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    optimized = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert optimized["Conv"] == 49 and optimized["Clip"] == 33 and optimized["Transpose"] == 1
    head = {"GlobalAveragePool", "Flatten", "Gemm", "Softmax"}
    assert set(optimized) <= {"Conv", "Clip", "Add", "Mul", "Transpose"} | head  # no BN, no Pad


APPLICATIONS = [
    ("MobileNetV2", {"input_shape": (96, 96, 3)}),
    ("ResNet50", {"include_top": False, "pooling": "avg", "input_shape": (64, 64, 3)}),
    ("DenseNet121", {"include_top": False, "pooling": "avg", "input_shape": (64, 64, 3)}),
    ("VGG16", {"include_top": False, "pooling": "max", "input_shape": (64, 64, 3)}),
    ("EfficientNetB0", {"include_top": False, "pooling": "avg", "input_shape": (64, 64, 3)}),
    ("MobileNetV3Small", {"input_shape": (96, 96, 3)}),
    ("InceptionV3", {"include_top": False, "pooling": "avg", "input_shape": (75, 75, 3)}),
    ("Xception", {"include_top": False, "pooling": "avg", "input_shape": (71, 71, 3)}),
    ("NASNetMobile", {"include_top": False, "pooling": "avg", "input_shape": (64, 64, 3)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs", APPLICATIONS, ids=[a[0] for a in APPLICATIONS])
def test_keras_applications(name, kwargs, photo_paths):
    import keras

    if name == "NASNetMobile" and keras.backend.backend() == "torch":
        pytest.skip("Keras does not build NASNet on the torch backend")
    model = getattr(keras.applications, name)(weights=None, **kwargs)
    _randomize_batchnorm(model)
    assert supports(model)
    x = _images(kwargs["input_shape"][0], photo_paths)
    if name not in ("EfficientNetB0", "MobileNetV3Small"):  # those rescale inside the model
        x = x / 127.5 - 1.0
    tol = 1e-4 if kwargs.get("include_top", True) else 1e-5
    _assert_matches(model, x, tol, relative=True)


def _small_base(input_shape):
    import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    y = L.DepthwiseConv2D(5, strides=2, padding="same", activation="swish")(x)
    y = L.SeparableConv2D(8, 3, padding="same")(y)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    return keras.Model(inputs, L.Add()([x, y]), name="small_base")


def test_nested_models_are_inlined():
    import keras

    L = keras.layers
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    _randomize_batchnorm(base)
    head = keras.Sequential([keras.Input((64, 64, 3)), base, L.GlobalAveragePooling2D()])
    head.add(L.Dense(5, activation="softmax"))
    x = _images(64) / 127.5 - 1.0
    _assert_matches(head, x, 1e-5)

    inner = _small_base((None, None, 3))  # unknown sizes inside: auto_pad SAME_UPPER fallback
    inputs = keras.Input((33, 33, 3))
    y = inner(L.Rescaling(1 / 255.0)(inputs))
    outer = keras.Model(inputs, L.Dense(4)(L.GlobalMaxPooling2D()(y)))
    _assert_matches(outer, _images(33), 1e-4)


@pytest.mark.backends
@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "lite", "none"])
def test_image_preprocess_modes(mode):
    import keras

    from kerascope.zoo.preprocess import ImagePreprocess

    inputs = keras.Input((12, 12, 3))
    x = ImagePreprocess(mode)(inputs)
    model = keras.Model(inputs, [x, keras.layers.Conv2D(4, 1)(x)])
    _assert_matches(model, _images(12), 1e-6, relative=True)


ZOO = [
    ("mobilenet_v2", {"input_shape": (96, 96, 3), "classifier_activation": None}),  # tf mode
    ("vgg16", {"include_top": False, "pooling": "avg", "input_shape": (64, 64, 3)}),  # caffe
]


@pytest.mark.parametrize("name, kwargs", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_models_start_with_image_preprocess_and_get_the_onnx_engine(name, kwargs, monkeypatch):
    from kerascope import inference
    from kerascope.zoo.models import build

    model = build(name, weights=None, **kwargs)
    _randomize_batchnorm(model)
    assert "ImagePreprocess" in {type(layer).__name__ for layer in model.layers}
    _assert_matches(model, _images(kwargs["input_shape"][0]), 1e-5, relative=True)
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    assert inference.choose_engine(model) == ("onnx" if inference.on_cpu() else "keras")


@pytest.mark.backends
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_resizing_matches_keras(interpolation):
    """Keras resizes at half-pixel centers without antialiasing: ONNX Resize half_pixel."""
    import keras

    L = keras.layers
    inputs = keras.Input((260, 260, 3))
    x = L.Resizing(224, 224, interpolation=interpolation)(inputs)
    model = keras.Model(inputs, L.Conv2D(4, 3, padding="same")(x))
    _assert_matches(model, _images(260), 1e-4, relative=True)
    inputs = keras.Input((31, 17, 3))  # up in one axis, down in the other, odd ratios
    model = keras.Model(inputs, L.Resizing(13, 40, interpolation=interpolation)(inputs))
    _assert_matches(model, _images(31)[:, :, :17], 1e-4, relative=True)


@pytest.mark.slow  # 14 s
def test_ensemble_of_resized_zoo_branches():
    """The ``features`` recipe's model: one input, a resize per branch, same-named inner layers."""
    import keras

    from kerascope.zoo.models import build

    inputs = keras.Input((96, 96, 3), name="image")
    branches = []
    for size in (64, 80):
        base = build("efficientnet_lite0", weights=None, include_top=False, pooling="avg",
                     input_shape=(size, size, 3))  # fmt: skip
        _randomize_batchnorm(base, seed=size)
        body = keras.Model(base.input, base.output, name=f"lite0_{size}")
        branches.append(body(keras.layers.Resizing(size, size)(inputs)))
    x = keras.layers.Concatenate()(branches)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    _assert_matches(model, _images(96), 1e-4, relative=True)


def test_resizing_options_that_change_the_result_are_refused():
    import keras

    inputs = keras.Input((40, 30, 3))
    for kwargs in ({"crop_to_aspect_ratio": True}, {"antialias": True}, {"interpolation": "area"}):
        model = keras.Model(inputs, keras.layers.Resizing(20, 20, name="rs", **kwargs)(inputs))
        assert not supports(model)
        with pytest.raises(UnsupportedLayerError, match="'rs' "):
            keras_to_onnx(model)


def _augmentations():
    import keras

    L, fill = keras.layers, {"value_range": (0, 255)}
    return [
        L.RandomFlip(), L.RandomRotation(0.2), L.RandomTranslation(0.2, 0.2), L.RandomZoom(0.2),
        L.RandomShear(0.2), L.RandomContrast(0.3), L.RandomBrightness(0.3, **fill),
        L.RandomHue(0.2, **fill), L.RandomSaturation(0.2, **fill), L.RandomColorJitter(**fill),
        L.RandomGrayscale(), L.RandomSharpness(0.2, **fill), L.RandomInvert(**fill),
        L.RandomPosterization(4, **fill), L.RandomGaussianBlur(), L.RandomErasing(**fill),
        L.RandomPerspective(),
    ]  # fmt: skip


@pytest.mark.backends
def test_random_augmentation_is_identity_at_inference():
    import keras

    from kerascope.data.augment import build_augmentation

    L = keras.layers
    inputs = keras.Input((24, 24, 3))
    x = build_augmentation(seed=0)(inputs)  # nested Sequential, as the train recipes make it
    for layer in _augmentations():
        x = layer(x)
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(L.Rescaling(1 / 255.0)(x)))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    assert supports(model)
    _assert_matches(model, _images(24), 1e-5)
    inputs = keras.Input((24, 24, 3))
    assert not supports(keras.Model(inputs, L.RandomCrop(16, 16)(inputs)))  # center crop


@pytest.mark.parametrize("size", [31, 32])
def test_dynamic_spatial_size(size):
    model = _small_base((None, None, 3))
    _assert_matches(model, _images(size, seed=size) / 255.0, 1e-4)


@pytest.mark.backends
def test_flatten_and_reshape_keep_keras_element_order():
    import keras

    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            L.Reshape((25, 4)),
            L.Dense(6),  # 3-D Dense: MatMul on the last axis
            L.Reshape((5, 5, 6)),
            L.Conv2D(3, 1),
            L.Flatten(),
            L.Dense(10),
        ]
    )
    _assert_matches(model, _images(9) / 255.0, 1e-5, relative=True)


@pytest.mark.backends
def test_many_layers_and_multiple_outputs():
    import keras

    L = keras.layers
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = L.Rescaling([1 / 58.0, 1 / 57.0, 1 / 57.5], offset=[-2.1, -2.0, -1.8])(inputs)
    norm = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[1.5, 0.7, 2.0])
    x = L.ZeroPadding2D(((1, 2), (0, 1)))(norm(x))
    x = L.Conv2D(8, 3, groups=1, dilation_rate=2, activation="gelu")(x)
    a = L.Conv2D(8, 3, groups=4, padding="same", activation="hard_swish")(x)
    b = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="elu")(x)
    b = L.SeparableConv2D(8, 3, depth_multiplier=2, dilation_rate=2, padding="same")(b)
    b = L.BatchNormalization(epsilon=1e-2)(L.Activation("hard_sigmoid")(b))
    x = L.Concatenate()([L.Subtract()([a, b]), L.Average()([a, b]), L.Maximum()([a, b])])
    x = L.LeakyReLU(0.1)(L.SpatialDropout2D(0.5)(L.GaussianNoise(1.0)(x)))
    x = L.Minimum()([x, 3.0 - x * 0.5 + 1.0])
    x = L.ReLU(max_value=4.0, negative_slope=0.05)(L.Identity()(x / 2.0))
    x = L.Cropping2D(((1, 0), (2, 1)))(L.AveragePooling2D(2, padding="same")(x))
    up = L.UpSampling2D(2)(x)
    smooth = L.UpSampling2D((2, 3), interpolation="bilinear")(x)
    pooled = L.GlobalAveragePooling2D(keepdims=True)(up)
    gate = L.Dense(24, activation="sigmoid")(L.GlobalMaxPooling2D(keepdims=True)(smooth))
    x = L.Multiply()([up, gate, pooled])
    x = L.Softmax()(L.Dense(5)(x))  # 4-D Dense and softmax over channels
    head = L.Dense(3, activation="tanh")(L.Dropout(0.5)(L.GlobalAveragePooling2D()(x)))
    model = keras.Model(inputs, [x, L.Activation("softmax")(head)])
    _randomize_batchnorm(model)
    _assert_matches(model, _images(16), 1e-5)


class _Custom:
    """Layer classes for the unsupported-layer tests (made lazily: Keras is not imported yet)."""

    @staticmethod
    def layer():
        import keras

        class Squash(keras.layers.Layer):
            def call(self, x):
                return x / (1.0 + keras.ops.abs(x))

        return Squash(name="my_squash")

    @staticmethod
    def model():
        import keras

        class Subclassed(keras.Model):
            def call(self, x):
                return x * 2.0

        return Subclassed(name="subclassed")


def test_unsupported_layer_is_named():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, _Custom.layer()(keras.layers.Conv2D(4, 3)(inputs)))
    assert not supports(model)
    with pytest.raises(UnsupportedLayerError, match=r"'my_squash' \(Squash\)"):
        keras_to_onnx(model)


def test_unsupported_config_is_explained():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.ReLU(threshold=0.5, name="gate")(inputs))
    assert not supports(model)
    with pytest.raises(UnsupportedLayerError, match="'gate' .*threshold"):
        keras_to_onnx(model)
    conv = keras.layers.Conv2D(4, 3, activation="mish", name="odd")
    assert not supports(keras.Sequential([keras.Input((8, 8, 3)), conv]))
    with pytest.raises(UnsupportedLayerError, match="'subclassed' .*functional"):
        keras_to_onnx(_Custom.model())


@pytest.mark.parametrize("opset", [14, 21])
def test_other_opsets(opset):
    model = _small_base((20, 20, 3))
    sess = ort.InferenceSession(keras_to_onnx(model, opset=opset, batch_dim="n"))
    assert sess.get_inputs()[0].shape == ["n", 20, 20, 3]
    x = _images(20) / 255.0
    assert (
        np.abs(
            sess.run(None, {sess.get_inputs()[0].name: x})[0] - model.predict(x, verbose=0)
        ).max()
        < 1e-4
    )
    with pytest.raises(ValueError, match="opset 13"):
        keras_to_onnx(model, opset=13)


@pytest.mark.slow
def test_compiled_runs_lite0_on_onnxruntime_with_keras_probabilities(lite0, photo_paths):
    """The inference core on a CPU: Lite0 (its "lite" preprocessing included) goes through
    onnxruntime and gives the probabilities Keras gives, on real photos."""
    from kerascope import inference

    if not inference.on_cpu():
        pytest.skip("the onnx engine is the CPU choice")
    x = np.stack([load_rgb(p, 224) for p in photo_paths.values()])
    fast = inference.compiled(lite0.model, "auto")
    assert fast.engine == "onnx"
    keras_probs = inference.compiled(lite0.model, "keras")(x)
    assert np.abs(fast(x) - keras_probs).max() <= 1e-4
