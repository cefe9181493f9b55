"""int8 on the CPU (issue 22): the calibrated graph, its measured agreement, the cache, the gate
behind ``--precision int8`` and ``kerascope export --precision int8``.

EfficientNet-Lite0 (real weights) is quantized once per module on a small calibration set
(16+ crops) and checked on a small one (17: one crop of each photo; the int8 graph runs about
11 crops/s on a 2-core AVX2 CPU); the real sizes (64 / 200) are the same code.
Nothing here asserts how good int8 happens to be: the bound is forced to pass or to fail where
a test needs one or the other, and the agreement is recomputed independently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerascope import cli, inference, quantize
from kerascope.precision import PrecisionError, dtype_policy

from .conftest import load_rgb

onnx = pytest.importorskip("onnx")
CATS = {"tabby", "tiger_cat", "Egyptian_cat"}
CAT_IDS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def small():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "CALIBRATION_IMAGES", 16)
        mp.setattr(quantize, "CHECK_IMAGES", len(quantize.photo_files()))  # one crop each
        mp.setattr(quantize, "LADDER", ((),))  # one rung for Lite0; the ladder: test below
        yield mp


@pytest.fixture(scope="module")
def graph(small, lite0):
    return quantize.int8_graph(lite0.model)


@pytest.fixture
def no_int8_forwards(lite0, monkeypatch):
    """Keep the session's shared Lite0 free of int8 forwards built by a test."""
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    monkeypatch.delenv("KERASCOPE_PRECISION", raising=False)
    yield
    forwards = vars(lite0.model).get("_kerascope_forwards", {})
    for key in [k for k in forwards if k.endswith(":int8")]:
        forwards.pop(key)


def _chelsea(photo_paths) -> np.ndarray:
    return load_rgb(photo_paths["chelsea"], 224)[None]


@pytest.mark.slow  # 9-13 s: out of make test-fast's loop (make test runs it)
def test_int8_graph_is_int8_measured_as_it_says_and_chelsea_stays_a_cat(graph, lite0, photo_paths):
    from kerascope.onnx_export import cache

    proto = onnx.load_from_string(graph.payload)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") > 40 and ops.count("QuantizeLinear") > 20
    quantized = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert len(quantized) > 40  # the convolution weights are stored as 8-bit integers
    # The recorded agreement is the one an independent run of both graphs gives.
    images = quantize.photo_crops((224, 224), quantize.CHECK_IMAGES, 1)
    assert len(images) == len(quantize.photo_files()) >= 12  # a crop of every photo
    reference = quantize.probabilities(cache.onnx_bytes(lite0.model), images)
    again = quantize.measure(reference, quantize.probabilities(graph.payload, images), "")
    assert graph.agreement.images == len(images)
    assert graph.agreement.top1 == again.top1
    assert graph.agreement.mean_dp == pytest.approx(again.mean_dp, abs=1e-6)
    assert "real photos" in graph.calibration and "chelsea.png" in graph.calibration
    # chelsea (a tabby) is still a cat in int8.
    probs = quantize.probabilities(graph.payload, _chelsea(photo_paths))
    assert int(probs.argmax()) in CAT_IDS


def test_second_call_reads_the_disk_cache_and_does_not_quantize_again(graph, lite0, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("quantized or measured again")

    vars(lite0.model).pop(quantize._ATTR)  # as a new process would: only the disk cache left
    monkeypatch.setattr(quantize, "quantize_graph", fail)
    monkeypatch.setattr(quantize, "probabilities", fail)
    again = quantize.int8_graph(lite0.model)
    assert again.cached and again.payload == graph.payload and again.agreement == graph.agreement
    # Another calibration set is another graph: quantized anew, never the cached one.
    with pytest.raises(AssertionError, match="quantized or measured again"):
        quantize.int8_graph(lite0.model, photos=quantize.photo_files()[:4])


def test_int8_refused_in_one_line_with_the_numbers(graph, photo_paths, monkeypatch, capsys,
                                                   no_int8_forwards):  # fmt: skip
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # a bound no graph can meet
    capsys.readouterr()
    code = cli.main(["classify", str(photo_paths["chelsea"]), "--precision", "int8"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and "computing in" not in err
    a = graph.agreement
    assert "int8 refused for 'efficientnet_lite0'" in err
    assert f"top-1 agreement with float32 {a.top1:.1%}" in err
    assert f"mean |Δp| {a.mean_dp:.4f}" in err and f"on {a.images} real-photo crops" in err
    assert "--precision float32" in err


def test_int8_runs_where_it_meets_the_bound_and_says_so(graph, lite0, photo_paths, monkeypatch,
                                                        capsys, no_int8_forwards):  # fmt: skip
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(quantize, "MAX_MEAN_DP", 1.0)
    fwd = inference.compiled(lite0.model, precision="int8")
    assert (fwd.engine, fwd.precision) == ("onnx", "int8")
    x = _chelsea(photo_paths)
    np.testing.assert_allclose(fwd(x), quantize.probabilities(graph.payload, x), atol=1e-6)
    capsys.readouterr()
    code = cli.main(["classify", str(photo_paths["chelsea"]), "--precision", "int8", "--top", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "computing in int8" in err and "on the onnx engine" in err
    assert any(cat in out for cat in CATS)
    from kerascope.engines import openvino_installed

    if openvino_installed():  # the same int8 graph, compiled by OpenVINO when asked for
        monkeypatch.setenv("KERASCOPE_ENGINE", "openvino")
        fwd = inference.compiled(lite0.model, precision="int8")
        assert (fwd.engine, fwd.precision) == ("openvino", "int8")
        probs = fwd(np.concatenate([x, x[:, ::-1]]))
        assert probs.shape == (2, 1000) and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_int8_where_it_cannot_run_is_refused(graph, lite0, monkeypatch, no_int8_forwards):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    with pytest.raises(quantize.Int8RefusedError, match="keras engine has no int8"):
        inference.compiled(lite0.model, precision="int8")
    with pytest.raises(PrecisionError, match="int8 is for inference on the CPU"):
        dtype_policy("int8")  # training and Keras clones: no int8
    parser = cli.build_parser()
    assert parser.parse_args(["classify", "x.jpg", "--precision", "int8"]).precision == "int8"
    for command in (["explain", "x.jpg"], ["train", "data"]):  # refused before any model loads
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--precision", "int8"])
    with pytest.raises(quantize.Int8RefusedError, match="not one"):
        quantize._input_size(_two_inputs())


def _two_inputs():
    import keras

    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    return keras.Model([a, b], keras.layers.Add()([a, b]), name="two")


def test_export_int8_writes_the_graph_with_its_agreement(graph, tmp_path, photo_paths, capsys):
    import onnxruntime as ort

    out = tmp_path / "lite0-int8.onnx"
    capsys.readouterr()
    code = cli.main(["export", "efficientnet_lite0", "-o", str(out), "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == (0 if graph.agreement.met else 1), err  # a miss exits 1, as classify refuses
    verdict = "meets" if graph.agreement.met else "MISSES"
    assert f"{verdict} the bound" in err and graph.agreement.text() in err
    proto = onnx.load(out)
    props = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(props[quantize.META_KEY])
    assert record["agreement"]["top1"] == graph.agreement.top1
    assert record["agreement"]["images"] == graph.agreement.images
    assert record["calibration"] == graph.calibration and record["met"] == graph.agreement.met
    assert props["precision"] == "int8" and json.loads(props["input_size"]) == [224, 224]
    assert "tabby" in json.loads(props["classes"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _chelsea(photo_paths)
    (got,) = session.run(None, {"image": x})  # uint8 in, like a float32 export
    np.testing.assert_allclose(got, quantize.probabilities(graph.payload, x), atol=1e-5)
    # int8 writes ONNX only: one line, nothing written.
    code = cli.main(["export", "efficientnet_lite0", "-o", str(tmp_path / "m.keras"),
                     "--precision", "int8"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "ONNX only" in err
    assert not (tmp_path / "m.keras").exists()


def _tiny_bottleneck():
    """12x12 RGB -> 5 classes: conv, depthwise, linear 1x1 projection, head (NumPy weights)."""
    import keras

    L = keras.layers
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = L.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu6", name="stem")(x)
    x = L.Conv2D(16, 1, activation="relu6", name="expand")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")(x)
    x = L.Conv2D(8, 1, name="project")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(5, activation="softmax", name="fc")(x), name="bottleneck")


def test_ladder_keeps_more_in_float32_until_the_bound_is_met(small, monkeypatch):
    """Each rung is tried only while the bound is missed; the best measured one is kept."""
    from kerascope.onnx_export import supports

    model = _tiny_bottleneck()
    assert supports(model)
    rungs = []
    real = quantize.quantize_graph

    def counted(fp32, crops, keep=()):
        rungs.append(keep)
        return real(fp32, crops, keep)

    monkeypatch.setattr(quantize, "quantize_graph", counted)
    monkeypatch.setattr(quantize, "LADDER", ((), ("depthwise", "projection")))
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # missed by every rung
    graph = quantize.int8_graph(model)
    assert rungs == [(), ("depthwise", "projection")]
    assert "float32 kept for: preprocessing, first conv, head" in graph.quantizer
    proto = onnx.load_from_string(graph.payload)
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    quantized_weights = {name for name, n in convs.items() if n.input[1] in dequantized}
    if "depthwise" in graph.quantizer:  # the second rung won: only the expansion is int8
        assert len(quantized_weights) == 1
    else:
        assert len(quantized_weights) == 3  # expand, dw, project; the stem stays float32
    # A bound every rung meets: the first (most int8) rung is taken and nothing else tried.
    rungs.clear()
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(quantize, "MAX_MEAN_DP", 1.0)
    vars(model).pop(quantize._ATTR)
    monkeypatch.setattr(quantize, "QUANTIZER_VERSION", "test-another-key")
    assert quantize.int8_graph(model).agreement.met and rungs == [()]


def test_weights_are_uint8_where_int8_dot_products_would_saturate():
    """AVX2 without VNNI: u8s8 kernels saturate, so uint8 weights; VNNI/AMX: int8 weights."""
    assert quantize.weight_type(frozenset({"avx2", "fma"})) == "uint8"
    assert quantize.weight_type(frozenset({"avx2", "avx512f", "avx512_vnni"})) == "int8"
    assert quantize.weight_type(frozenset({"avx2", "avx_vnni"})) == "int8"
    assert quantize.weight_type(frozenset({"amx_tile", "amx_int8"})) == "int8"
    assert f"per-channel {quantize.weight_type()} weights" in quantize._quantizer()


def test_int8_is_refused_for_a_model_without_probabilities(small):
    """Agreement is measured on class probabilities: a feature body is refused, not gated on
    numbers that mean nothing (and before any quantization)."""
    import keras

    L = keras.layers
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(L.Rescaling(1 / 255.0)(inputs))
    body = keras.Model(inputs, L.GlobalAveragePooling2D()(x), name="body")
    with pytest.raises(quantize.Int8RefusedError, match="'body' does not output them"):
        quantize.int8_graph(body)
