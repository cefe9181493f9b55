"""`kerascope models`: the zoo as data, listed without building (or importing) any network."""

from __future__ import annotations

import json
import subprocess
import sys

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
