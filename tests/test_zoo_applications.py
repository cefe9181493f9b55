"""The keras.applications zoo entries: complete, well named, and true to the built models."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from collections import Counter

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
        assert w.filename.endswith(".h5") and "notop" not in w.filename
        assert w.file_hash is None or re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{64}", w.file_hash)
        assert w.package is None and w.converter is None
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
@pytest.mark.parametrize("spec", APP_SPECS, ids=[s.name for s in APP_SPECS])
def test_built_model_matches_spec(spec):
    from kerascope.config import ensure_backend

    ensure_backend()
    import keras

    keras.backend.clear_session()
    gc.collect()
    model = spec.builder_fn()(weights=None)
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
        gc.collect()
