"""The inference core: one compiled forward for any (sub)model, on either engine, cached."""

from __future__ import annotations

import numpy as np
import pytest

from kerascope import inference

ENGINES = ("keras", "onnx")


def _tiny(seed: int = 0, name: str = "tiny"):
    """12x12 RGB -> 5 probabilities; NumPy weights, so outputs are O(1) and reproducible."""
    import keras

    L = keras.layers
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(6, 3, strides=2, padding="same", activation="relu6", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(5, activation="softmax", name="fc")(x)
    model = keras.Model(inputs, outputs, name=name)
    _randomize(model, seed)
    return model


def _randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.0, w.shape).astype("float32") for w in model.weights])


def _pixels(n: int = 3, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _as_list(out) -> list[np.ndarray]:
    return out if isinstance(out, list) else [out]


def _close(a, b, tol: float = 1e-4) -> None:
    a, b = _as_list(a), _as_list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= tol * max(1.0, float(np.abs(y).max()))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test converts into its own cache folder (no hits from another test's graphs)."""
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "home"))


@pytest.mark.backends
def test_engines_agree_on_a_classifier_and_take_uint8_or_float(tiny, monkeypatch):
    x = _pixels()
    expected = tiny.predict(x.astype("float32"), verbose=0)
    for engine in ENGINES:
        monkeypatch.setenv("KERASCOPE_ENGINE", engine)
        fwd = inference.compiled(tiny)
        assert fwd.engine == engine == inference.engine_name(tiny)
        got = fwd(x)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        _close(got, expected)
        _close(fwd(x.astype("float32")), expected)


@pytest.mark.backends
def test_multi_output_prefix_returns_a_list_in_output_order(tiny):
    import keras

    names = ["conv1", "gap", "conv2"]
    prefix = keras.Model(tiny.input, [tiny.get_layer(n).output for n in names], name="cut")
    expected = prefix.predict(_pixels().astype("float32"), verbose=0)
    outs = {engine: inference.compiled(prefix, engine)(_pixels()) for engine in ENGINES}
    for got in outs.values():
        assert isinstance(got, list) and [o.shape for o in got] == [e.shape for e in expected]
        _close(got, expected)


def test_model_from_intermediate_tensors_and_an_input_as_output(tiny):
    """Keras clones ``conv1``'s output into a new Input (not named "image"): both engines run it."""
    import keras

    prefix = keras.Model(tiny.input, tiny.get_layer("conv1").output)
    suffix = keras.Model(tiny.get_layer("conv1").output, tiny.output)
    assert suffix.inputs[0].name != "pixels"
    both = keras.Model(tiny.input, [tiny.input, tiny.output])  # graph input == graph output
    x = _pixels()
    full = inference.compiled(tiny, "keras")(x)
    for engine in ENGINES:
        mid = inference.compiled(prefix, engine)(x)
        _close(inference.compiled(suffix, engine)(mid), full)
        same, probs = inference.compiled(both, engine)(x)
        np.testing.assert_array_equal(same, x.astype("float32"))
        _close(probs, full)


def test_one_forward_per_model_and_engine_until_forgotten(tiny, monkeypatch):
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    auto = inference.compiled(tiny)
    assert auto.engine == ("onnx" if inference.on_cpu() else "keras")
    assert inference.compiled(tiny) is auto
    assert inference.compiled(tiny, auto.engine) is auto
    keras_fwd = inference.compiled(tiny, "keras")
    assert keras_fwd is not inference.compiled(tiny, "onnx")
    inference.forget(tiny)
    assert inference.compiled(tiny, "keras") is not keras_fwd
    with pytest.raises(inference.EngineError, match="use one of auto, keras, onnx"):
        inference.compiled(tiny, "tensorrt")
    monkeypatch.setenv("KERASCOPE_ENGINE", "fast")
    with pytest.raises(inference.EngineError, match="KERASCOPE_ENGINE='fast'"):
        inference.compiled(tiny)


def test_keras_engine_reads_current_weights_onnx_snapshots_them():
    model = _tiny(seed=1)
    x = _pixels()
    keras_fwd, onnx_fwd = (inference.compiled(model, e) for e in ENGINES)
    assert onnx_fwd.snapshot and not keras_fwd.snapshot
    before = keras_fwd(x)
    _randomize(model, seed=2)  # as a trainer would between two calls
    after = model.predict(x.astype("float32"), verbose=0)
    assert np.abs(after - before).max() > 1e-3
    _close(keras_fwd(x), after)
    _close(onnx_fwd(x), before)  # baked in ...
    inference.forget(model)
    _close(inference.compiled(model, "onnx")(x), after)  # ... until forgotten


def _count_conversions(monkeypatch) -> list:
    from kerascope.onnx_export import export

    calls, convert = [], export.keras_to_onnx

    def counting(model, **kwargs):
        calls.append(model.name)
        return convert(model, **kwargs)

    monkeypatch.setattr(export, "keras_to_onnx", counting)
    return calls


def test_converted_graph_is_reused_from_disk(tiny, monkeypatch):
    from kerascope.onnx_export import cache, export

    calls = _count_conversions(monkeypatch)
    expected = inference.compiled(tiny, "keras")(_pixels())
    inference.forget(tiny)
    _close(inference.compiled(tiny, "onnx")(_pixels()), expected)
    path = cache.folder() / f"{cache.model_key(tiny)}.onnx"
    assert path.is_file() and calls == ["tiny"]

    def refuse(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(export, "keras_to_onnx", refuse)
    twin = _tiny()  # another process: same structure and weights, a new model object
    assert twin is not tiny and cache.model_key(twin) == cache.model_key(tiny)
    _close(inference.compiled(twin, "onnx")(_pixels()), expected)


def test_weights_and_converter_version_change_the_key(monkeypatch):
    from kerascope.onnx_export import cache, export

    model = _tiny(seed=3)
    key = cache.model_key(model)
    assert key == cache.model_key(model) and len(key) == 64
    assert cache.model_key(_tiny(seed=4)) != key
    monkeypatch.setattr(export, "CONVERTER_VERSION", "test")
    assert cache.model_key(model) != key


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_cache_file_is_converted_again(damage, monkeypatch):
    from kerascope.onnx_export import cache

    model = _tiny(seed=5)
    expected = inference.compiled(model, "keras")(_pixels())
    calls = _count_conversions(monkeypatch)
    inference.compiled(model, "onnx")
    path = cache.folder() / f"{cache.model_key(model)}.onnx"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data = data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]
    else:
        data = b"not an onnx file"
    path.write_bytes(data)
    inference.forget(model)
    _close(inference.compiled(model, "onnx")(_pixels()), expected)
    assert len(calls) == 2  # converted again ...
    assert cache.read_payload(path) is not None  # ... and stored whole


def test_unwritable_cache_folder_still_converts(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KERASCOPE_HOME", str(blocker))
    model = _tiny(seed=6)
    expected = inference.compiled(model, "keras")(_pixels())
    _close(inference.compiled(model, "onnx")(_pixels()), expected)
