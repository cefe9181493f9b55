"""`kerascope models`: the zoo as data, listed without building (or importing) any network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kerascope.cli import main


def test_models_json_lists_every_spec_with_weight_status(capsys):
    assert main(["models", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert names[0] == "efficientnet_lite0"
    for expected in (
        "vgg16",
        "resnet152_v2",
        "inception_v3",
        "xception",
        "mobilenet_v3_large",
        "densenet201",
        "nasnet_large",
        "efficientnet_b7",
        "efficientnet_v2_l",
        "convnext_xlarge",
        "efficientnet_lite2",
    ):
        assert expected in names
    lite = rows[0]
    assert lite["offline"] is True and lite["input_size"] == 224
    assert lite["weights"]["package_path"].endswith(".pth")
    vgg = rows[names.index("vgg16")]
    assert vgg["offline"] is False and vgg["weights"]["url"].startswith("https://")


def test_models_show_accepts_keras_class_name(capsys):
    assert main(["models", "show", "ResNet50", "--format", "json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["name"] == "resnet50" and spec["preprocess"] == "caffe"
    assert spec["cam_layer"] == "conv5_block3_out"


def test_models_show_unknown_suggests(capsys):
    assert main(["models", "show", "efficientnet_lite9"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_listing_imports_no_network_code():
    code = (
        "import sys; from kerascope.cli import main; main(['models']); "
        "assert 'keras' not in sys.modules and 'jax' not in sys.modules, 'built networks'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_models_table_shows_depth_and_the_cpu_column(capsys):
    from kerascope.zoo import registry

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "name" in line and "depth" in line)
    assert "CPU ms/img" in header

    def cells(name: str) -> list[str]:
        row = next(line for line in lines if f" {name} " in line)
        return [c.strip() for c in row.strip("│┃ ").split("│")]

    columns = [c.strip() for c in header.strip("│┃ ").split("┃")]
    depth, ms = columns.index("depth"), columns.index("CPU ms/img")
    assert cells("resnet50")[depth] == str(registry.get("resnet50").depth)
    assert registry.get("efficientnet_v2_s").depth is None
    assert cells("efficientnet_v2_s")[depth] == "-"
    # Lite's depth counted as Keras's table counts it: its layers with weights (was "-")
    from kerascope.zoo.fast_init import shapes_only
    from kerascope.zoo.models import build

    with shapes_only():
        lite0 = build("efficientnet_lite0", weights=None)
    assert cells("efficientnet_lite0")[depth] == str(sum(1 for x in lite0.layers if x.weights))
    assert cells("vgg16")[ms] == "-"  # never measured: no weights here
    # One format for the size: "109.4" beside "98.0", not "109.42" beside "98".
    size = columns.index("size MB")
    shown = {name: cells(name)[size] for name in ("resnet50", "convnext_tiny", "mobilenet_v3_small",
                                                  "convnext_xlarge")}  # fmt: skip
    assert shown == {"resnet50": "98.0", "convnext_tiny": "109.4", "mobilenet_v3_small": "10.2",
                     "convnext_xlarge": "1310.0"}  # fmt: skip


def test_models_layers_numbers_as_keras_counts(capsys):
    from kerascope.zoo import registry

    assert main(["models", "layers", "InceptionV3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert rows[0]["name"] == "image" and "preprocess" not in [r["name"] for r in rows]
    # The Keras fine-tuning guide freezes InceptionV3's first 249 layers: up to mixed8.
    assert rows[248]["name"] == "mixed8" and rows[249]["kind"] == "Conv2D"
    spec = registry.get("inception_v3")
    assert [r["name"] for r in rows if r["cam_default"]] == [spec.cam_layer] == ["mixed10"]
    assert rows[-1]["name"] == "mixed10" and rows[-1]["output_shape"] == [None, 8, 8, 2048]
    classifier = 2048 * 1000 + 1000  # the Dense layer left out of the backbone
    assert sum(r["params"] for r in rows) == spec.params - classifier


def test_models_layers_table_and_errors(capsys):
    assert main(["models", "layers", "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out
    cam = next(line for line in out.splitlines() if " conv_1_bn " in line)
    assert "default" in cam and "BatchNormalization" in cam
    assert main(["models", "layers"]) == 2
    assert "usage: kerascope models layers NAME" in capsys.readouterr().err
    assert main(["models", "layers", "[bold]resnet"]) == 2  # printed as typed, not as markup
    err = capsys.readouterr().err
    assert "'[bold]resnet'" in err and err.count("\n") == 1


def test_models_measure_remembers_cpu_time_per_cpu(lite0, tmp_path, monkeypatch, capsys):
    import shutil

    from kerascope.measure import cpu_name, timings_path
    from kerascope.zoo import registry
    from kerascope.zoo.weights import cached_file, checksum_file

    ported = cached_file(registry.get("efficientnet_lite0"))  # ported for `lite0`
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path))
    shutil.copy(ported, tmp_path)
    shutil.copy(checksum_file(ported), tmp_path)

    assert main(["models", "show", "efficientnet_lite0", "--measure", "--format", "json"]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["cpu"] == cpu_name() and shown["cpu_ms_per_image"] > 0
    assert "ms/image on" in captured.err
    saved = json.loads(timings_path().read_text())
    entry = saved[cpu_name()]["efficientnet_lite0"]
    assert entry["ms_per_image"] == shown["cpu_ms_per_image"] and entry["batch"] == 8
    assert entry["engine"] in ("onnx", "keras")

    assert main(["models", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["cpu_ms_per_image"] == entry["ms_per_image"]
    assert rows["efficientnet_lite1"]["cpu_ms_per_image"] is None

    # Another machine's numbers are not this one's: keyed by CPU name.
    saved = {"Another CPU": {"efficientnet_lite1": {"ms_per_image": 1.0}}, **saved}
    timings_path().write_text(json.dumps(saved))
    assert main(["models", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite1"]["cpu_ms_per_image"] is None
    timings_path().write_text("{damaged")  # only a cache: the table still lists
    assert main(["models"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out


def test_models_measure_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path))
    assert main(["models", "show", "resnet50", "--measure"]) == 2  # no weights here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in err
    assert main(["models", "layers", "resnet50", "--measure"]) == 2
    assert "--measure" in capsys.readouterr().err


def test_an_unknown_name_suggests_each_model_once():
    """Before: "did you mean efficientnet_lite1, efficientnet_lite0, efficientnet_lite1?" (an
    alias and its name counted twice), and nothing said a list is the features recipe's."""
    from kerascope.zoo import registry

    with pytest.raises(registry.UnknownModelError) as err:
        registry.get("efficientnet_lite0,efficientnet_lite1")
    meant = str(err.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert len(meant) == len(set(meant)) and "efficientnet_lite0" in meant
    assert "the features recipe takes several" in str(err.value)


def test_models_show_prints_each_url_whole(capsys):
    """The new-user walkthrough found the weights URLs cut with an ellipsis at 120 columns."""
    from kerascope.cli import main
    from kerascope.zoo.registry import get

    assert main(["models", "show", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert get("resnet50").weights.url in out and "…" not in out
