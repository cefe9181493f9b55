"""CPU engines (issue 22): OpenVINO beside onnxruntime on the converted graph, auto's rule,
the measured choice per CPU model, and bfloat16 only where the CPU has bf16 units."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerascope import engines, inference
from kerascope.precision import PrecisionError, cpu_info, cpu_native_bfloat16

from .conftest import load_rgb

GRAPH = ("onnx", "openvino")


def _tiny(name: str = "tiny"):
    """12x12 RGB -> 5 probabilities (NumPy-initialised by the session fixture)."""
    import keras

    L = keras.layers
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(5, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name=name)


def _pixels(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def _close(got, expected, tol: float = 1e-4) -> None:
    got = got if isinstance(got, list) else [got]
    expected = expected if isinstance(expected, list) else [expected]
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g - e).max() <= tol * max(1.0, float(np.abs(e).max()))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(autouse=True)
def _no_engine_setting(monkeypatch):
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)


def test_both_graph_engines_match_keras_on_lite0_with_real_photos(lite0, photo_paths):
    """fp32 parity with Keras within 1e-4 on the real weights, and the same top-5."""
    x = np.stack([load_rgb(p, 224) for p in photo_paths.values()])
    expected = np.asarray(lite0.model.predict(x.astype("float32"), verbose=0))
    for engine in GRAPH:
        fwd = inference.compiled(lite0.model, engine)
        assert fwd.engine == engine and fwd.precision == "float32" and fwd.snapshot
        got = fwd(x)
        assert got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4, engine
        np.testing.assert_array_equal(
            np.argsort(-got, axis=1)[:, :5], np.argsort(-expected, axis=1)[:, :5]
        )
    assert int(np.argmax(got[0])) in (281, 282, 285)  # chelsea: tabby, tiger or Egyptian cat


def test_openvino_runs_prefixes_several_outputs_and_intermediate_inputs(tiny):
    import keras

    x = _pixels()
    names = ["conv1", "gap", "fc"]
    cut = keras.Model(tiny.input, [tiny.get_layer(n).output for n in names], name="cut")
    expected = cut.predict(x.astype("float32"), verbose=0)
    _close(inference.compiled(cut, "openvino")(x), expected)
    prefix = keras.Model(tiny.input, tiny.get_layer("conv1").output)
    suffix = keras.Model(tiny.get_layer("conv1").output, tiny.output)
    mid = inference.compiled(prefix, "openvino")(x)
    _close(inference.compiled(suffix, "openvino")(mid), expected[2])
    values, indices = inference.compiled(tiny, "openvino").top_k(x, 2)
    np.testing.assert_array_equal(indices, np.argsort(-expected[2], axis=1)[:, :2])


def test_openvino_snapshots_the_weights_until_forgotten():
    model = _tiny("snap")
    x = _pixels()
    fwd = inference.compiled(model, "openvino")
    before = fwd(x)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    np.testing.assert_array_equal(inference.compiled(model, "openvino")(x), before)
    inference.forget(model)
    after = inference.compiled(model, "openvino")(x)
    _close(after, model.predict(x.astype("float32"), verbose=0))
    assert np.abs(after - before).max() > 1e-3


def test_openvino_is_thread_safe_one_request_per_thread(tiny):
    from concurrent.futures import ThreadPoolExecutor

    fwd = inference.compiled(tiny, "openvino")
    batches = [_pixels(seed=s) for s in range(8)]
    expected = [fwd(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(fwd, batches * 4))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, expected[i % 8])


def test_auto_is_onnxruntime_for_float32_until_a_measurement_says_otherwise(
    tiny, monkeypatch, tmp_path
):
    """The rule, then the measured choice kept per CPU model (and dropped with new versions)."""
    if not inference.on_cpu():
        pytest.skip("auto is keras off the CPU")
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path))  # the measurement stays in this test
    assert inference.choose_engine(tiny) == "onnx"
    assert engines.measured_choice() is None
    batch = _pixels(8)
    monkeypatch.setattr(engines, "MARGIN", float("inf"))  # nothing is infinitely faster
    record = engines.measure(tiny, batch, rounds=2)
    assert record["float32"] == "onnx" and set(record["ms_per_image"]) == set(GRAPH)
    assert inference.choose_engine(tiny) == "onnx"
    monkeypatch.setattr(engines, "MARGIN", 0.0)  # any speed wins
    assert engines.measure(tiny, batch, rounds=2)["float32"] == "openvino"
    model = _tiny("after_measuring")  # a model not compiled before
    assert engines.measured_choice() == "openvino"
    assert inference.compiled(model).engine == "openvino"
    stored = engines.engines_path().read_text(encoding="utf-8")
    assert cpu_info()[0] in stored
    monkeypatch.setattr(engines, "_versions", lambda: {"onnxruntime": "0", "openvino": "0"})
    assert engines.measured_choice() is None  # measured with other engines: not trusted
    assert inference.choose_engine(_tiny("new_versions")) == "onnx"


def test_bfloat16_on_a_cpu_follows_its_bf16_units(tiny, monkeypatch):
    assert not cpu_native_bfloat16(frozenset({"avx2", "fma", "avx512f"}))
    assert cpu_native_bfloat16(frozenset({"avx2", "amx_bf16"}))
    assert cpu_native_bfloat16(frozenset({"avx512_bf16"}))
    flags = cpu_info()[1]
    assert cpu_native_bfloat16() == bool({"amx_bf16", "avx512_bf16"} & flags)
    if not inference.on_cpu():
        pytest.skip("the CPU rule")
    if not cpu_native_bfloat16():
        with pytest.raises(PrecisionError, match="no bfloat16 units") as info:
            inference.compiled(tiny, "openvino", precision="bfloat16")
        assert "\n" not in str(info.value) and "--precision float32" in str(info.value)
        assert inference.choose_engine(tiny, precision="bfloat16") == "keras"  # as before
    monkeypatch.setattr(engines, "cpu_native_bfloat16", lambda flags=None: True)
    assert inference.choose_engine(tiny, precision="bfloat16") == "openvino"
    assert inference.choose_engine(tiny, precision="float32") == "onnx"
    with pytest.raises(PrecisionError, match="onnx engine computes in float32 only"):
        inference.choose_engine(tiny, "onnx", precision="bfloat16")
    with pytest.raises(PrecisionError, match="float32 or bfloat16, not float16"):
        inference.choose_engine(tiny, "openvino", precision="float16")


def test_the_engine_setting_names_openvino_and_split_training_uses_it(monkeypatch):
    from kerascope.training.run import use_split

    with pytest.raises(inference.EngineError, match="auto, keras, onnx, openvino"):
        inference.requested_engine("tensorrt")
    monkeypatch.setenv("KERASCOPE_ENGINE", "openvino")
    assert inference.requested_engine() == "openvino"
    assert use_split(augmented=True)  # the frozen prefix runs on OpenVINO, on any device


def test_importing_openvino_through_kerascope_sends_no_telemetry(tmp_path):
    """A stand-in ``openvino_telemetry`` that records being imported: OpenVINO's converter
    imports it (and sends a usage event) on a plain ``import openvino``; through kerascope it
    is never imported."""
    fake = tmp_path / "site" / "openvino_telemetry"
    fake.mkdir(parents=True)
    marker = tmp_path / "imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError\n")
    code = textwrap.dedent(
        """
        import sys
        from kerascope.engines import import_openvino
        import_openvino().Core()
        print("telemetry module:", sys.modules.get("openvino_telemetry"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "telemetry module: None" in done.stdout and not marker.exists()
    plain = subprocess.run([sys.executable, "-c", "import openvino"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plain.returncode == 0 and marker.exists()  # the stand-in does see a plain import


def test_classify_says_it_ran_on_openvino_with_onnxruntime_s_answer(photo_paths, monkeypatch,
                                                                    capsys):  # fmt: skip
    from kerascope.cli import main

    chelsea = str(photo_paths["chelsea"])
    rows = {}
    for engine in GRAPH:
        monkeypatch.setenv("KERASCOPE_ENGINE", engine)
        code = main(["classify", chelsea, "--top", "1", "--precision", "fp32", "-f", "csv"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert f"computing in float32 on the {engine} engine" in captured.err
        rows[engine] = captured.out.splitlines()[1].split(",")
    assert rows["openvino"][3] == rows["onnx"][3] and rows["onnx"][3].endswith("cat")
    assert abs(float(rows["openvino"][4]) - float(rows["onnx"][4])) <= 1e-4
    monkeypatch.setenv("KERASCOPE_ENGINE", "openvino")  # no --precision: still said
    assert main(["classify", chelsea, "--top", "1", "-f", "csv"]) == 0
    assert "computing in float32 on the openvino engine" in capsys.readouterr().err


@pytest.mark.slow
def test_split_training_runs_its_frozen_prefix_on_openvino(tmp_path, monkeypatch, capsys):
    """The same engine choice for training: the prefix on OpenVINO, the saved network right."""
    import keras

    from kerascope.training import train
    from kerascope.training.split import split_model
    from kerascope.zoo.models import load_model
    from tests.test_train import make_shapes

    data = make_shapes(tmp_path / "shapes", n=24)
    # the engine asked for (before: --engine openvino ran the prefix on onnxruntime)
    train(data, recipe="transfer", output=tmp_path / "asked", epochs=1, image_size=48,
          batch_size=16, augment=False, engine="openvino")  # fmt: skip
    assert "split training: frozen prefix on openvino" in capsys.readouterr().out
    monkeypatch.setenv("KERASCOPE_ENGINE", "openvino")
    result = train(data, recipe="transfer", output=tmp_path / "run", epochs=1, image_size=48,
                   batch_size=16, augment=False)  # fmt: skip
    assert "split training: frozen prefix on openvino" in capsys.readouterr().out
    parts = split_model(result.model)
    prefix = inference.compiled(parts.prefix)
    assert prefix.engine == "openvino"
    x = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 3)).astype("uint8")
    composite = keras.ops.convert_to_numpy(parts.suffix(prefix(x)))
    saved = load_model(tmp_path / "run").model
    np.testing.assert_allclose(composite, keras.ops.convert_to_numpy(saved(x.astype("float32"))),
                               atol=1e-4)  # fmt: skip
