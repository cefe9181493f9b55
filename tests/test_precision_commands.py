"""Issue 18 on CPU: device-dependent batch defaults, and ``--precision`` on serve and batch.

The real default model (efficientnet_lite0, ported weights) on the real cat photo (chelsea,
a tabby): bfloat16 and float32 agree on its class; every answer says what it computed in.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.batch_sizes import (
    BATCH_SIZES,
    batch_size_or_default,
    default_batch_size,
    device_kind,
)

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CAT_IDS = ("n02123045", "n02123159", "n02123394", "n02123597", "n02124075")


# --- the batch-size rule ------------------------------------------------------------------------


def test_gpu_defaults_are_larger_and_explicit_batch_size_wins():
    assert default_batch_size("classify", "cpu") == 32
    assert default_batch_size("explain", "cpu") == 16
    assert default_batch_size("classify", "gpu") == 256
    assert default_batch_size("explain", "gpu") == 128
    assert default_batch_size("classify", "tpu") == 256
    for work in BATCH_SIZES:  # a device never gets a smaller batch than the CPU
        assert BATCH_SIZES[work]["gpu"] > BATCH_SIZES[work]["cpu"]
    assert batch_size_or_default(8, "classify") == 8  # -b 8 on any device
    assert device_kind() == "cpu"  # this machine (CI has no GPU)
    assert batch_size_or_default(None, "explain") == 16
    with pytest.raises(ValueError, match="device kind"):
        default_batch_size("classify", "npu")


def test_device_defaults_shrink_with_the_input_by_its_pixels():
    """A 600² model (EfficientNet-B7) on a GPU: 16 images to explain, not 128 (a batch's
    activations ~7x a 224² one's); a CPU's sizes and an explicit -b stay."""
    assert default_batch_size("explain", "gpu", (600, 600)) == 16
    assert default_batch_size("classify", "gpu", (600, 600)) == 32
    assert default_batch_size("classify", "gpu", (240, 240)) == 216  # Lite1: 256 * (224/240)²
    assert default_batch_size("explain", "tpu", (299, 299)) == 64
    assert default_batch_size("classify", "gpu", (224, 224)) == 256
    assert default_batch_size("classify", "gpu", (32, 32)) == 256  # never above the table
    assert default_batch_size("explain", "gpu", (4000, 4000)) == 8  # never below 8
    assert default_batch_size("explain", "cpu", (600, 600)) == 16
    assert batch_size_or_default(None, "explain", (600, 600)) == 16  # this CPU
    assert batch_size_or_default(100, "explain", (600, 600)) == 100


@pytest.mark.backends
def test_on_torch_the_device_is_the_one_keras_computes_on(monkeypatch):
    """KERAS_TORCH_DEVICE=cpu on a CUDA machine is a CPU run: CPU batch sizes, no bf16, no
    dispatching ahead; Keras on cuda (or mps) is a GPU run."""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("the torch backend's rule")
    from keras.src.backend.torch import core

    from kerascope.inference import on_cpu
    from kerascope.precision import native_bfloat16

    monkeypatch.setattr(core, "get_device", lambda: "cuda:0")
    assert device_kind() == "gpu" and not on_cpu()
    monkeypatch.setattr(core, "get_device", lambda: "mps")
    assert device_kind() == "gpu"
    monkeypatch.setattr(core, "get_device", lambda: "cpu")
    assert device_kind() == "cpu" and on_cpu() and not native_bfloat16()
    assert batch_size_or_default(None, "classify") == 32


@pytest.mark.parametrize(("command", "cpu", "gpu"), [("classify", 32, 256), ("explain", 16, 128)])
def test_help_states_the_rule(command, cpu, gpu, capsys):
    from kerascope.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([command, "x.jpg"])
    assert args.batch_size is None  # filled in by the device when the command runs
    assert parser.parse_args([command, "-b", "8", "x.jpg"]).batch_size == 8
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {cpu} on a CPU, {gpu} on a GPU or TPU" in text


# --- serve --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea_224(chelsea):
    from kerascope.images import resize

    return resize(chelsea, (224, 224))


@pytest.fixture(scope="module")
def served_bf16(lite0):
    from kerascope.serve.served import load_served

    from .conftest import cpu_without_bf16_units

    with cpu_without_bf16_units():  # the keras engine's mixed clone, whatever this CPU has
        served = load_served(["efficientnet_lite0"], max_batch=4, warm=False, precision="bfloat16")
        yield next(iter(served.values()))


@pytest.mark.slow  # real weights: Lite0 compiled in bfloat16 on the CPU
def test_serve_runs_in_the_precision_asked_and_says_so(served_bf16, lite0, chelsea_224):
    from kerascope.inference import compiled

    model = served_bf16
    assert model.precision == "bfloat16" and model.engine == "keras"
    assert model.describe(True)["precision"] == "bfloat16"
    (probs,) = model._classify([chelsea_224])
    exact = compiled(lite0.model, precision="float32")(chelsea_224[None])[0]
    assert int(np.argmax(probs)) == int(np.argmax(exact)) and np.argmax(probs) in CATS
    assert np.abs(probs - exact).max() < 0.05  # bfloat16 keeps ~3 significant digits
    ((heat, cls, p),) = model._explain("gradcam", [(chelsea_224, -1)])
    assert cls == int(np.argmax(exact)) and model.explain_precision("gradcam") == "bfloat16"
    assert heat.max() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow  # real weights: Lite0 converted for OpenVINO
def test_serve_in_bfloat16_on_a_cpu_with_bf16_units_runs_openvino_and_explains(lite0, chelsea_224):
    """On a CPU with bf16 units (pinned here, so every machine runs this path: an AMD EPYC
    with AVX512-BF16 takes it by itself) bfloat16 classifies on OpenVINO; its explanations,
    which need gradients, run on the keras engine in bfloat16 and name the same class."""
    from kerascope import engines
    from kerascope.serve.served import load_served

    if not engines.openvino_installed():
        pytest.skip("needs openvino (`make install-test`)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engines, "cpu_native_bfloat16", lambda flags=None: True)
        served = load_served(["efficientnet_lite0"], max_batch=4, warm=False,
                             precision="bfloat16")  # fmt: skip
        model = next(iter(served.values()))
        assert model.engine == "openvino" and model.describe(True)["precision"] == "bfloat16"
        (probs,) = model._classify([chelsea_224])
        ((heat, cls, p),) = model._explain("gradcam", [(chelsea_224, -1)])
    assert np.argmax(probs) in CATS and cls == int(np.argmax(probs))
    assert model.explain_precision("gradcam") == "bfloat16"
    assert heat.max() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow  # real weights: Lite0 compiled in bfloat16 on the CPU
def test_serve_responses_say_the_precision(served_bf16, chelsea_224):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from kerascope.serve.app import create_app

    app = create_app({served_bf16.key: served_bf16})
    data = io.BytesIO()
    Image.fromarray(chelsea_224).save(data, "PNG")
    upload = [("file", ("cat.png", data.getvalue()))]
    with TestClient(app) as client:
        models = client.get("/v1/models").json()["models"]
        assert models[0]["precision"] == "bfloat16"
        classified = client.post("/v1/classify", files=upload).json()
        assert classified["precision"] == "bfloat16"
        assert classified["results"][0]["predictions"][0]["class_id"] in CAT_IDS
        explained = client.post("/v1/explain", files=upload).json()
        assert explained["precision"] == "bfloat16"
        picture = client.post("/v1/explain?format=png", files=upload)
        assert picture.headers["X-Kerascope-Precision"] == "bfloat16"


def test_serve_cli_takes_precision():
    from kerascope.cli import build_parser

    assert build_parser().parse_args(["serve", "--precision", "bf16"]).precision == "bfloat16"
    assert build_parser().parse_args(["serve"]).precision is None


# --- batch --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cat_folder(tmp_path_factory, skimage_data):
    import shutil

    folder = tmp_path_factory.mktemp("cats")
    shutil.copy(skimage_data / "chelsea.png", folder / "chelsea.png")
    shutil.copy(skimage_data / "coffee.png", folder / "coffee.png")
    return folder


@pytest.mark.slow  # real weights: Lite0 compiled in bfloat16 on the CPU
def test_batch_classify_in_bfloat16_records_it(cat_folder, lite0, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from kerascope.scale import run_batch, shard_info
    from kerascope.scale.plan import shard_dir

    reports = {}
    for precision in ("float32", "bfloat16"):
        reports[precision] = run_batch("classify", [str(cat_folder)], tmp_path / precision,
                                       top=3, precision=precision)  # fmt: skip
    rows = {}
    for precision, report in reports.items():
        assert report.precisions == [precision] and report.errors == 0
        (shard,) = shard_dir(report.output, "classify").glob("*.parquet")
        assert shard_info(shard)["precision"] == precision
        assert shard_info(shard)["settings"]["precision"] == precision
        table = pq.read_table(shard).to_pylist()
        rows[precision] = {(r["image"], r["rank"]): r for r in table}
    for key, exact in rows["float32"].items():
        if key[1] == 1:  # top-1 agrees on both photos; probabilities within bfloat16's reach
            assert rows["bfloat16"][key]["class_id"] == exact["class_id"]
            assert rows["bfloat16"][key]["probability"] == pytest.approx(
                exact["probability"], abs=0.05
            )
    cat = [r for k, r in rows["bfloat16"].items() if k[0].endswith("chelsea.png") and k[1] == 1]
    assert cat[0]["class_id"] in CAT_IDS


def test_batch_cli_precision_and_batch_size_defaults():
    from kerascope.cli import build_parser

    args = build_parser().parse_args(["batch", "explain", "x", "-o", "out", "--precision", "fp16"])
    assert args.precision == "float16" and args.batch_size is None


def test_the_int8_line_never_names_the_keras_engine():
    """Before: a command that did not pass its engine (evaluate, predict) printed "computing
    in int8 ... on the keras engine", the one engine that has no int8."""
    from kerascope.precision import ran_in

    assert "keras" not in ran_in("int8")
    assert ran_in("int8", "onnx").endswith("bound) on the onnx engine")
    assert ran_in("bfloat16") == ("computing in bfloat16 (mixed: float32 weights and outputs) "
                                  "on the keras engine")  # fmt: skip
    assert ran_in("float32") == "computing in float32"


def test_reduced_precision_on_a_cpus_keras_engine_says_it_is_slower(capsys):
    """Before: nothing said that bfloat16 on a CPU is slower (a finetune epoch 77.8 s against
    16 s), with bf16 units or without; OpenVINO's bf16 is not."""
    from kerascope.cli_common import say_precision
    from kerascope.training.run_data import precision_line

    say_precision("bfloat16", "bfloat16", "keras")
    assert "bfloat16 on a CPU's keras engine is slower than float32" in capsys.readouterr().err
    say_precision("bfloat16", "bfloat16", "openvino")
    assert "slower" not in capsys.readouterr().err
    assert precision_line("float16").startswith("precision: float16 (weights float32); float16 "
                                                "on a CPU's keras engine is slower")  # fmt: skip
    assert precision_line("float32") == "precision: float32 (weights float32)"
