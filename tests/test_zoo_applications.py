"""The keras.applications zoo entries: complete, well named, and true to the built models."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from kerascope.zoo import registry
from kerascope.zoo.registry import PREPROCESS_MODES


def _app_specs() -> list[registry.ModelSpec]:
    # Through the registry, so every built-in module registers (importing
    # kerascope.zoo.applications alone would leave the others out for later tests).
    return [s for s in registry.all_specs() if s.builder.startswith("keras.applications:")]


APP_SPECS = _app_specs()


def test_every_keras_application_has_exactly_one_spec():
    from kerascope.config import ensure_backend

    ensure_backend()
    import keras

    # Every public model builder; a model added to a later Keras fails here until it is listed.
    in_keras = {
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    }
    assert len(in_keras) >= 40
    counts = Counter(spec.keras_name for spec in APP_SPECS)
    assert not [name for name, n in counts.items() if n > 1]
    assert set(counts) == in_keras
    for spec in APP_SPECS:
        assert spec.builder == f"keras.applications:{spec.keras_name}"
        assert callable(spec.builder_fn())


def test_names_are_snake_case_unique_and_resolve():
    names = [spec.name for spec in APP_SPECS]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), name
    resnet = registry.get("resnet50")
    assert registry.get("ResNet50") is resnet
    assert registry.get("RESNET50") is resnet
    assert registry.get("resnet-50") is resnet
    assert registry.get("mobilenetv2") is registry.get("mobilenet_v2")
    assert registry.get("inceptionv3").keras_name == "InceptionV3"
    assert registry.get("efficientnet_v2_s").input_size == 384
    # Every spelling of every spec leads back to that spec, never to another one.
    for spec in APP_SPECS:
        for alias in (spec.name, spec.keras_name, *spec.aliases):
            assert registry.get(alias) is spec, alias


def test_spec_fields_are_consistent():
    for spec in APP_SPECS:
        assert spec.preprocess in PREPROCESS_MODES
        assert spec.cam_layer
        assert spec.params > 0 and spec.size_mb > 0
        assert spec.top1 is not None and 0.5 < spec.top1 < 1
        assert spec.top5 is None or spec.top1 < spec.top5 < 1
        w = spec.weights
        assert w.url and w.url.startswith("https://storage.googleapis.com/")
        assert w.filename.endswith(".h5") and not re.search(r"no_?top", w.filename)
        assert w.file_hash is None or re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{64}", w.file_hash)
        assert w.package is None and w.converter is None
        # Keras's file without the classifier: its own name, URL and hash of the same kind.
        notop = w.notop
        assert notop is not None and w.for_top(False) is notop and w.for_top(True) is w
        assert notop.filename.endswith(".h5") and re.search(r"no_?top", notop.filename)
        assert notop.url and notop.url.startswith("https://storage.googleapis.com/")
        assert notop.url.rsplit("/", 1)[0] == w.url.rsplit("/", 1)[0]
        assert (notop.file_hash is None) == (w.file_hash is None)
        assert notop.file_hash is None or len(notop.file_hash) == len(w.file_hash)
        assert notop.file_hash != w.file_hash or w.file_hash is None
        assert notop.notop is None and notop.package is None
    lite = registry.get("efficientnet_lite0").weights  # one ported file serves both
    assert lite.notop is None and lite.for_top(False) is lite
    by_name = {spec.name: spec for spec in APP_SPECS}
    assert by_name["vgg16"].preprocess == "caffe"
    assert by_name["resnet50"].preprocess == "caffe"
    assert by_name["resnet50_v2"].preprocess == "tf"
    assert by_name["densenet121"].preprocess == "torch"
    assert by_name["efficientnet_b0"].preprocess == "none"
    assert by_name["nasnet_large"].input_size == 331


def test_import_does_not_import_keras():
    code = (
        "import sys; import kerascope.zoo.applications as a; "
        "assert len(a.SPECS) >= 40; "
        "loaded = [m for m in sys.modules if m == 'keras' or m.startswith('keras.')]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")  # MobileNetV3 on imagenet
@pytest.mark.parametrize("spec", APP_SPECS, ids=[s.name for s in APP_SPECS])
def test_built_model_matches_spec(spec, monkeypatch):
    from kerascope.config import ensure_backend

    ensure_backend()
    import keras
    from keras.src.models.model import Model
    from keras.src.utils import file_utils

    # What Keras itself asks get_file for, with and without top: the spec's files must be
    # those (name, URL, hash). Nothing is downloaded and nothing loaded.
    asked: list[tuple] = []

    def get_file(fname=None, origin=None, *args, file_hash=None, **kwargs):
        asked.append((fname, origin, file_hash, kwargs.get("hash_algorithm", "auto")))
        return "not-downloaded.h5"

    monkeypatch.setattr(file_utils, "get_file", get_file)
    monkeypatch.setattr(Model, "load_weights", lambda self, *args, **kwargs: None)

    keras.backend.clear_session()  # collects garbage too (free_memory=True)
    # Shapes only: in a StatelessScope Keras defers every variable's value (this test reads
    # shapes, names and counts, never values). With Keras's initializers this file took 552 s,
    # with NumPy-drawn values (numpy_init) 67-105 s CPU: ConvNeXtXLarge alone draws 350M.
    with keras.StatelessScope(initialize_variables=False):
        model = spec.builder_fn()(weights="imagenet")
        spec.builder_fn()(weights="imagenet", include_top=False)
    with_top, without_top = (spec.weights, spec.weights.notop)
    assert asked == [
        (with_top.filename, with_top.url, with_top.file_hash, "auto"),
        (without_top.filename, without_top.url, without_top.file_hash, "auto"),
    ]
    try:
        height, width = model.input_shape[1:3]
        if spec.family == "mobilenet_v3":  # built for any size unless told; weights are 224
            assert (height, width) == (None, None)
        else:
            assert (height, width) == (spec.input_size, spec.input_size)
        assert model.count_params() == spec.params

        cam = model.get_layer(spec.cam_layer)
        assert len(cam.output.shape) == 4
        # It belongs to the last stage: as many channels as the last spatial feature map.
        spatial = [
            layer
            for layer in model.layers
            if len(layer.output.shape) == 4 and tuple(layer.output.shape[1:3]) != (1, 1)
        ]
        assert cam in spatial
        assert cam.output.shape[-1] == spatial[-1].output.shape[-1]
    finally:
        del model
        keras.backend.clear_session()


# --- kerascope.zoo.fast_init: how the zoo models above (and every test model) get built --------


def _stats(values) -> tuple[float, float, float, float]:
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(), values.min(), values.max()


def test_numpy_init_draws_what_the_keras_initializers_draw():
    from kerascope.config import ensure_backend
    from kerascope.zoo.fast_init import numpy_value

    ensure_backend()
    from keras import initializers as ki

    shape = (3, 3, 24, 40)  # a conv kernel: fan_in 216, fan_out 360
    cases = [
        ki.GlorotUniform(), ki.GlorotNormal(), ki.HeNormal(), ki.HeUniform(), ki.LecunNormal(),
        ki.LecunUniform(), ki.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        ki.RandomUniform(-1.0, 2.0), ki.RandomNormal(1.0, 0.5), ki.TruncatedNormal(0.5, 0.02),
        ki.Orthogonal(gain=2.0), ki.Zeros(), ki.Ones(), ki.Constant(3.5),
    ]  # fmt: skip
    for init in cases:
        name = type(init).__name__
        keras_value = np.asarray(init(shape, dtype="float32"))
        ours = numpy_value(init, shape, "float32")
        assert ours.shape == shape and ours.dtype == np.float32, name
        (km, ks, klo, khi), (m, s, lo, hi) = _stats(keras_value), _stats(ours)
        # Both are random draws (Keras's unseeded): their means differ by chance with a
        # standard error of ks * sqrt(2 / n); 6 of them, as a wrong mean or scale is far more.
        assert abs(m - km) <= 6 * ks * np.sqrt(2 / keras_value.size) + 1e-6 * abs(km), name
        assert abs(s - ks) <= 0.05 * ks if ks else s == 0, name
        if isinstance(init, (ki.RandomUniform, ki.TruncatedNormal, ki.GlorotUniform)):
            spread = khi - klo  # bounded draws: same bounds (uniform limits, 2-sigma cut)
            assert klo - 0.01 * spread <= lo and hi <= khi + 0.01 * spread, name
            assert lo <= klo + 0.05 * spread and khi - 0.05 * spread <= hi, name
    q = numpy_value(ki.Orthogonal(), (48, 16), "float32").astype(np.float64)
    assert np.allclose(q.T @ q, np.eye(16), atol=1e-5)
    assert (numpy_value(ki.Identity(gain=2.0), (3, 4), "float32") == 2 * np.eye(3, 4)).all()
    # An integer seed gives the same values every time, as in Keras; another seed others.
    seeded = numpy_value(ki.HeNormal(seed=7), shape, "float32")
    assert np.array_equal(seeded, numpy_value(ki.HeNormal(seed=7), shape, "float32"))
    assert not np.array_equal(seeded, numpy_value(ki.HeNormal(seed=8), shape, "float32"))
    assert numpy_value(ki.Zeros(), (2, 3), "int32").dtype == np.int32

    class Custom(ki.GlorotUniform):  # its own __call__: left to Keras
        def __call__(self, shape, dtype=None):
            return super().__call__(shape, dtype) * 0

    assert numpy_value(Custom(), shape, "float32") is None
    assert numpy_value(ki.GlorotUniform(), shape, "int32") is None
    assert numpy_value(ki.GlorotUniform(), shape, "bfloat16") is None
    assert numpy_value(lambda shape, dtype=None: np.ones(shape), shape, "float32") is None


@pytest.mark.keras_init  # conftest's numpy_init is on around the whole session otherwise
def test_numpy_init_compiles_nothing_and_nests():
    from kerascope.config import ensure_backend
    from kerascope.zoo.fast_init import keras_init, numpy_init

    if ensure_backend() != "jax":
        pytest.skip("the compilations counted are JAX's")
    import jax.monitoring
    import keras

    programs = []

    def on_event(event, secs, **kwargs):
        if event.startswith("/jax/core/compile/"):
            programs.append(event)

    def build(width):  # sizes no other test uses: each would need XLA programs of its own
        keras.utils.set_random_seed(1)
        inputs = keras.Input((9, 9, 3))
        x = keras.layers.Conv2D(width, 3)(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(width + 2)(x))

    def compiles(width) -> bool:  # a layer alone: Keras's way costs a compilation per shape
        programs.clear()
        keras.layers.Dense(width).build((None, 3))
        return bool(programs)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        assert compiles(41), "Keras's own initializers compile on JAX: nothing was measured"
        with numpy_init():
            with numpy_init():  # nested: NumPy inside, and still after the inner block
                programs.clear()
                a = build(37)
                assert programs == []
            assert not compiles(43)
            with keras_init():  # the innermost block decides
                assert compiles(47)
            with numpy_init(enabled=False):
                assert not compiles(53)
            b = build(37)
        assert compiles(59)  # Keras's again once the blocks end
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert all(np.array_equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))
    kernel = np.asarray(a.layers[1].kernel)  # glorot-uniform: within its limit, not constant
    assert 0 < kernel.std() and np.abs(kernel).max() <= np.sqrt(6 / (27 + 9 * 37))


def test_shapes_only_draws_no_value_then_or_later():
    """Keras's ``StatelessScope(initialize_variables=False)`` only postpones the values: the
    next scope to end (``fit``'s symbolic build) draws them. `shapes_only` draws none, ever;
    the variables deferred outside it still get theirs."""
    import keras

    from kerascope.zoo.fast_init import shapes_only

    with keras.StatelessScope(initialize_variables=False):
        postponed = keras.layers.Dense(3)
        postponed.build((None, 2))
    with shapes_only():
        probe = keras.layers.Dense(5)
        probe.build((None, 4))
    assert probe.kernel.shape == (4, 5) and probe.count_params() == 25
    assert postponed.kernel._value is None and probe.kernel._value is None
    with keras.StatelessScope():  # as the first fit's symbolic build ends
        pass
    assert postponed.kernel._value is not None and postponed.kernel.numpy().std() > 0
    assert probe.kernel._value is None and probe.bias._value is None
