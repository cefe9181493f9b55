"""Hostile and unlucky ``.keras`` files: each is one line naming the file and the fix, before
Keras builds anything from it (issue 23), through `load_model` and the `classify` and `export`
commands alike.

The files are real Keras saves of a tiny classifier, then edited the way a probe edits them:
a 200,000x200,000 input written into ``config.json``, a safe-mode toggle injected into it, the
archive truncated.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.zoo.models import ModelFileError, load_model

from .test_export import run_cli

TOGGLE = {"module": "keras.config", "class_name": "function",
          "config": "enable_unsafe_deserialization", "registered_name": "function"}  # fmt: skip


def tiny(size=(24, 24), outputs: int = 1, sequential: bool = False) -> keras.Model:
    """Rescaling -> strided conv -> pool -> softmax over 3 classes, NumPy-initialised."""
    layers = [
        keras.layers.Rescaling(1 / 255, name="rescale"),
        keras.layers.Conv2D(4, 3, strides=2, name="conv"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
    ]
    if sequential:
        model = keras.Sequential([keras.Input((*size, 3)), *layers, keras.layers.Dense(3)])
    else:
        inputs = keras.Input((*size, 3), name="image")
        x = inputs
        for layer in layers:
            x = layer(x)
        heads = [keras.layers.Dense(3, activation="softmax", name=f"p{i}")(x)
                 for i in range(outputs)]  # fmt: skip
        # named: Keras numbers unnamed models per process (functional_57 in a full suite run)
        model = keras.Model(inputs, heads if outputs > 1 else heads[0], name="tiny")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape) for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    models = {"tiny": tiny(), "sequential": tiny(sequential=True),
              "two_outputs": tiny(outputs=2), "any_size": tiny(size=(None, None))}  # fmt: skip
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
    return {name: folder / f"{name}.keras" for name in models}


def edited(source: Path, target: Path, edit) -> Path:
    """``source`` with ``edit(config)`` applied to its config.json, every other entry kept."""
    with zipfile.ZipFile(source) as archive:
        parts = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(parts["config.json"])
    edit(config)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, json.dumps(config) if name == "config.json" else data)
    return target


def huge_input(config) -> None:
    """Every 24x24 shape in the config becomes 200,000x200,000 (what the probe did)."""
    if isinstance(config, dict):
        for key, value in config.items():
            if isinstance(value, list) and value[1:3] == [24, 24]:
                config[key] = [value[0], 200_000, 200_000, *value[3:]]
            else:
                huge_input(value)
    elif isinstance(config, list):
        for value in config:
            huge_input(value)


def one_line(argv: list[str], monkeypatch, capsys) -> str:
    code, err = run_cli(argv, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("kerascope: error: ").strip()


def cli_cases(path: Path, tmp_path: Path, chelsea_path: Path) -> list[list[str]]:
    return [["export", str(path), "-o", str(tmp_path / "out.onnx")],
            ["export", str(path), "-o", str(tmp_path / "out.keras")],
            ["classify", str(chelsea_path), "--model", str(path)]]  # fmt: skip


@pytest.mark.parametrize("kind", ["tiny", "sequential"])
def test_a_huge_declared_input_is_refused_before_building(
    saved, kind, tmp_path, monkeypatch, capsys, photo_paths
):
    """Issue 23: a 16 KB .keras declaring 200,000x200,000 made export use 24 GB (MemoryError
    or the kernel's kill). Refused from config.json: nothing built, nothing resized."""
    path = edited(saved[kind], tmp_path / "huge.keras", huge_input)
    assert path.stat().st_size < 64 << 10
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 16 << 20
    message = str(info.value)
    assert message == (
        f"cannot load model '{path}': it takes 200000x200000x3 inputs, so its first layer "
        "alone would need ~480.0 GB per image (limit 2.0 GB); rebuild it with an input of a "
        "few hundred pixels a side, e.g. keras.Input((224, 224, 3))"
    )
    for argv in cli_cases(path, tmp_path, photo_paths["chelsea"]):
        assert one_line(argv, monkeypatch, capsys) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.keras"]


def test_a_wide_first_convolution_counts(tmp_path):
    """The estimate is the first layer's output: 64 filters at stride 1 on 6000x6000 RGB take
    9.2 GB, where the input itself (432 MB as float32) would pass."""
    inputs = keras.Input((24, 24, 3), name="image")
    x = keras.layers.Conv2D(64, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "c.keras")

    def wide(config):
        config["config"]["layers"][0]["config"]["batch_shape"] = [None, 6000, 6000, 3]

    with pytest.raises(ModelFileError, match=r"6000x6000x3 inputs, .* need ~9.2 GB per image"):
        load_model(edited(tmp_path / "c.keras", tmp_path / "wide.keras", wide))


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("two_outputs", "it has 2 outputs; kerascope needs one (N, classes) output (save "
                        "keras.Model(model.input, model.outputs[0]) for the first)"),
        ("any_size", "it takes images of any size (None, None, None, 3); kerascope needs a "
                     "fixed input size: rebuild it with one, e.g. keras.Input((224, 224, 3))"),
    ],
)  # fmt: skip
def test_models_kerascope_cannot_run_are_one_line(
    saved, kind, fragment, tmp_path, monkeypatch, capsys, photo_paths
):
    """Issue 23: export (and classify) of a two-output model or a (None, None) input were
    tracebacks (int() of a tuple, int() of None)."""
    path = saved[kind]
    for argv in cli_cases(path, tmp_path, photo_paths["chelsea"]):
        assert one_line(argv, monkeypatch, capsys) == f"cannot use model '{path}': {fragment}"
    assert not list(tmp_path.iterdir())


def test_every_truncation_says_truncated(saved, tmp_path, monkeypatch, capsys, photo_paths):
    """Issue 23: a truncated model.keras said "File not found" (Keras's words for a file that
    is not a zip). A run directory's model.keras, cut anywhere, says what it is."""
    data = saved["tiny"].read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    for cut in sorted({0, 1, 100, len(data) // 2, len(data) - 22, len(data) - 1}):
        (run / "model.keras").write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as info:
            load_model(run)
        assert str(info.value).startswith(
            f"cannot load model '{run / 'model.keras'}': the file is truncated or corrupt ("
        ), cut
        assert str(info.value).endswith("); copy or save it again")
    message = one_line(["classify", str(photo_paths["chelsea"]), "--model", str(run)],
                       monkeypatch, capsys)  # fmt: skip
    assert "truncated or corrupt" in message and "File not found" not in message


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("layer list", "names 'enable_unsafe_deserialization' in layer 'tiny', which "
                       "would switch Keras's safe mode off"),
        ("activation", "names 'enable_unsafe_deserialization' in layer 'conv', which would "
                       "switch Keras's safe mode off"),
        ("module path", "names 'keras.src.saving.serialization_lib.enable_unsafe_deserializat"
                        "ion' in layer 'conv'"),
        ("lambda", "holds a Python lambda (layer 'rescale'), code Keras's safe mode does not run"),
    ],
)  # fmt: skip
def test_a_safe_mode_toggle_or_lambda_is_refused_by_name(
    saved, where, fragment, tmp_path, monkeypatch, capsys, photo_paths
):
    """Issue 23: a safe-mode toggle injected into the layer list said only `'name'`."""

    def inject(config):
        layers = config["config"]["layers"]
        conv = next(x for x in layers if x["name"] == "conv")
        if where == "layer list":
            layers.insert(1, dict(TOGGLE))
        elif where == "activation":
            conv["config"]["activation"] = dict(TOGGLE)
        elif where == "module path":
            conv["config"]["activation"] = {
                **TOGGLE, "module": None,
                "config": "keras.src.saving.serialization_lib.enable_unsafe_deserialization",
            }  # fmt: skip
        else:
            rescale = next(x for x in layers if x["name"] == "rescale")
            rescale.update(class_name="Lambda", config={
                "name": "rescale", "arguments": {},
                "function": {"class_name": "__lambda__", "config": {"code": "AA==",
                             "defaults": None, "closure": None}},
            })  # fmt: skip

    path = edited(saved["tiny"], tmp_path / "toggled.keras", inject)
    for argv in cli_cases(path, tmp_path, photo_paths["chelsea"])[::2]:
        message = one_line(argv, monkeypatch, capsys)
        assert message.startswith(f"cannot load model '{path}': its config.json {fragment}")
        assert message.endswith("; refusing it (use a model file from a source you trust, "
                                "saved without Lambda layers)")  # fmt: skip


def test_archives_without_a_usable_config(saved, tmp_path):
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(saved["tiny"]) as src, zipfile.ZipFile(no_config, "w") as dst:
        for name in src.namelist():
            if name != "config.json":
                dst.writestr(name, src.read(name))
    with pytest.raises(ModelFileError, match="the archive has no config.json"):
        load_model(no_config)
    bad_json = tmp_path / "bad_json.keras"
    with zipfile.ZipFile(saved["tiny"]) as src, zipfile.ZipFile(bad_json, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"{not json" if name == "config.json" else src.read(name))
    with pytest.raises(ModelFileError, match=r"its config.json is damaged \(JSONDecodeError\)"):
        load_model(bad_json)


def test_the_untouched_files_still_load(saved):
    for kind in ("tiny", "sequential"):
        clf = load_model(saved[kind])
        assert clf.input_size == (24, 24) and clf.num_classes == 3


def test_running_out_of_memory_is_one_line(saved, tmp_path, monkeypatch, capsys):
    """MemoryError, wherever an export or a load meets it, is one line, never a traceback."""
    import kerascope.export

    def no_memory(*args, **kwargs):
        raise MemoryError

    with monkeypatch.context() as mp:
        mp.setattr(kerascope.export, "check_images", no_memory)
        message = one_line(["export", str(saved["tiny"]), "-o", str(tmp_path / "t.onnx")],
                           monkeypatch, capsys)  # fmt: skip
    assert message == ("ran out of memory exporting 'tiny' (24x24 input); nothing written: free "
                       "memory, or export a model with a smaller input")  # fmt: skip
    monkeypatch.setattr(keras.saving, "load_model", no_memory)
    with pytest.raises(ModelFileError, match="it does not fit in memory"):
        load_model(saved["tiny"])
    assert not list(tmp_path.iterdir())


def test_a_zoo_name_stays_the_zoos_beside_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    """Before: a folder named efficientnet_lite0 in the current directory took over the
    default model ("no model file at 'efficientnet_lite0/model.keras'", exit 2)."""
    import shutil

    from kerascope.cli import main
    from kerascope.testing import skimage_data

    monkeypatch.chdir(tmp_path)
    Path("efficientnet_lite0").mkdir()
    shutil.copy(skimage_data() / "chelsea.png", "efficientnet_lite0/cat.png")
    assert main(["classify", "efficientnet_lite0/cat.png", "-k", "1", "-f", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "_cat" in out.splitlines()[1]  # chelsea, by the zoo's ImageNet model
    assert "'efficientnet_lite0' is the zoo model; for the file or folder" in err
    with pytest.raises(ModelFileError, match="no model file at"):
        load_model("./efficientnet_lite0")  # the folder, written as a path


def test_weights_for_a_model_file_or_empty_are_refused(saved):
    """Before: --weights was ignored for a .keras model (its own weights ran), and an empty
    --weights fell back to the zoo's cache, both in silence."""
    with pytest.raises(ModelFileError, match="is for zoo models; .* holds its own weights"):
        load_model(saved["tiny"], weights="other.h5")
    with pytest.raises(ModelFileError, match="is empty"):
        load_model("efficientnet_lite0", weights=" ")
