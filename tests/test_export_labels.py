"""A ``.keras`` file keeps its run's class names once it leaves the run folder, and a file
kerascope cannot run (an ONNX export) is one line saying what to do.

Before: ``kerascope export runs/t1 -o t1.keras`` wrote a file whose predictions said
``class_1`` (the names stayed in the run's ``labels.json``), a copied ``model.keras`` the same,
both without a word, and ``predict t1.onnx`` printed Keras's text about SavedModel and
``TFSMLayer``. The record lives in the archive's ``metadata.json``, which Keras writes and
never reads: plain ``keras.saving.load_model`` still opens the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main
from kerascope.export import export_model
from kerascope.zoo.model_archive import read_record, write_record
from kerascope.zoo.models import Classifier, ModelFileError, load_model
from kerascope.zoo.registry import InputConvention

CLASSES = ["ant", "bee", "cat"]


def head(units: int, activation: str) -> keras.Model:
    """Rescaling -> conv -> pool -> Dense(units, activation), NumPy-initialised, 16 px."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(units, activation=activation, name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny_head")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape) for w in model.get_weights()])
    return model


def run_folder(folder: Path, model: keras.Model, classes: list[str], **files) -> Path:
    """A run folder as ``train`` leaves it for these tests: model.keras + labels.json (+ more)."""
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps({"classes": classes}))
    for name, record in files.items():
        (folder / f"{name}.json").write_text(json.dumps(record))
    return folder


@pytest.fixture(scope="module")
def t1(tmp_path_factory) -> Path:
    return run_folder(tmp_path_factory.mktemp("runs") / "t1", head(3, "softmax"), CLASSES)


@pytest.fixture(scope="module")
def test3(tmp_path_factory) -> Path:
    """Two random pictures per class folder."""
    root = tmp_path_factory.mktemp("test3")
    rng = np.random.default_rng(1)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(t1, test3, tmp_path_factory) -> Path:
    """`kerascope export runs/t1 -o t1.keras -f keras`, into a folder of its own."""
    out = tmp_path_factory.mktemp("elsewhere") / "t1.keras"
    check = [str(test3 / "cat" / "0.png")]
    assert main(["export", str(t1), "-o", str(out), "-f", "keras", "--check", *check]) == 0
    return out


def predicted(capsys, model: Path, folder: Path) -> tuple[list[str], str]:
    capsys.readouterr()
    assert main(["predict", str(model), str(folder), "-o", "-"]) == 0
    out, err = capsys.readouterr()
    rows = [line.split(",") for line in out.strip().splitlines()[1:]]
    return [row[1] for row in rows], err


def test_an_exported_keras_file_predicts_the_runs_class_names(exported, t1, test3, capsys):
    """Before: 'class_0' for every row of the exported file, the run's own said 'ant'."""
    from_run, _ = predicted(capsys, t1, test3 / "cat")
    from_file, err = predicted(capsys, exported, test3 / "cat")
    assert from_file == from_run and set(from_run) <= set(CLASSES)
    assert "no class names" not in err
    assert [name for _, name in load_model(exported).labels] == CLASSES


def test_evaluate_of_an_exported_file_knows_the_class_folders(exported, test3, tmp_path, capsys):
    """Before: "rename each to a class name of the model (e.g. class_0, class_1, class_2)"."""
    assert main(["evaluate", str(exported), str(test3), "-o", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "class_0" not in json.dumps(metrics) and "cat" in json.dumps(metrics)


def test_the_record_is_in_metadata_json_and_plain_keras_loads_the_file(exported, t1):
    """Three members as Keras writes them (a fourth would make Keras extract the whole archive
    as assets on every load); config.json untouched; plain load_model gives the same output."""
    with zipfile.ZipFile(exported) as archive:
        assert archive.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        meta = json.loads(archive.read("metadata.json"))
        assert "kerascope" not in archive.read("config.json").decode()
    assert meta["keras_version"] == keras.__version__
    assert meta["kerascope"]["classes"] == CLASSES
    assert meta["kerascope"]["class_ids"] == ["0", "1", "2"]
    loaded = keras.saving.load_model(exported, custom_objects={}, compile=False, safe_mode=True)
    x = np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    want = keras.saving.load_model(t1 / "model.keras", compile=False).predict(x, verbose=0)
    assert np.abs(loaded.predict(x, verbose=0) - want).max() <= 1e-6


@pytest.mark.slow  # a fresh interpreter importing Keras and JAX: a few seconds
def test_a_process_without_kerascope_loads_the_exported_file(exported):
    code = (
        "import sys; sys.modules['kerascope'] = None\n"  # any import of kerascope fails
        "import keras, numpy as np\n"
        f"m = keras.saving.load_model({str(exported)!r}, compile=False)\n"
        "print(m.predict(np.zeros((1, 16, 16, 3), 'float32'), verbose=0).shape)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "(1, 3)"


def test_a_copied_model_without_names_says_so_once(t1, test3, tmp_path, capsys, caplog):
    """Before: class_0, class_1 ... in silence."""
    copied = tmp_path / "copied.keras"
    shutil.copy(t1 / "model.keras", copied)
    labels, err = predicted(capsys, copied, test3 / "cat")
    assert set(labels) <= {"class_0", "class_1", "class_2"}
    said = [line for line in err.splitlines() if "no class names found" in line]
    assert said == [
        f"kerascope: no class names found for '{copied}' (no labels.json beside it, none "
        "inside it): classes are shown as class_0..class_2 (export its run with `kerascope "
        "export RUN -o model.keras` to keep them in the file)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        load_model(copied)
    assert not [r for r in caplog.records if "no class names" in r.getMessage()]  # once


def test_labels_json_beside_the_file_still_comes_first(exported, tmp_path):
    """The run's files can be edited; the record inside is what a lone file falls back on."""
    moved = tmp_path / "t1.keras"
    shutil.copy(exported, moved)
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["x", "y", "z"]}))
    assert [name for _, name in load_model(moved).labels] == ["x", "y", "z"]


def test_a_binary_run_keeps_its_two_names(tmp_path):
    run = run_folder(tmp_path / "binary", head(1, "sigmoid"), ["no", "yes"])
    out = export_model(run, tmp_path / "out" / "binary.keras").path
    clf = load_model(out)
    assert clf.num_classes == 2 and [name for _, name in clf.labels] == ["no", "yes"]
    x = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3)).astype(np.float32)
    want = load_model(run).model.predict(x, verbose=0)
    assert np.abs(clf.model.predict(x, verbose=0) - want).max() <= 1e-6


def test_a_multilabel_run_keeps_its_labels_and_thresholds(tmp_path):
    """Its thresholds, not its CSV and splits (they belong to the run's folder)."""
    record = {"labels": CLASSES, "thresholds": [0.3, 0.5, 0.7], "csv": "/data/labels.csv",
              "threshold_rule": "max F1 per label on the validation rows",
              "splits": {"train": ["a.png"], "validation": ["b.png"]}}  # fmt: skip
    run = run_folder(tmp_path / "ml", head(3, "sigmoid"), CLASSES, multilabel=record)
    out = export_model(run, tmp_path / "out" / "ml.keras").path
    clf = load_model(out)
    assert [name for _, name in clf.labels] == CLASSES
    assert clf.extra["multilabel"] == {"labels": CLASSES, "thresholds": [0.3, 0.5, 0.7],
                                       "threshold_rule": record["threshold_rule"]}  # fmt: skip


def test_a_zoo_style_model_keeps_its_input_convention_ids_and_cam_layer(tmp_path):
    """A zoo model's weights want a centre crop (Lite0: 0.875, bicubic); loaded back from its
    .keras export it was squashed, as a trained run is."""
    crop = InputConvention(resize="crop", crop_fraction=0.875, interpolation="bicubic")
    labels = [("n01", "ant"), ("n02", "bee"), ("n03", "cat")]
    clf = Classifier(head(3, "softmax"), "zooish", (16, 16), labels, cam_layer="conv",
                     convention=crop)  # fmt: skip
    out = export_model(clf, tmp_path / "zooish.keras").path
    back = load_model(out)
    assert back.labels == labels and back.cam_layer == "conv" and back.convention == crop


@pytest.mark.slow  # Lite0's real weights, exported and classified twice: ~10 s
def test_lite0_exported_as_keras_classifies_as_the_zoo_model(lite0, photo_paths, tmp_path):
    """Before: the file's pictures were squashed (a trained run's convention), not cut from
    the centre at 0.875 as Lite0's weights were evaluated: other probabilities, no heatmap
    layer. ImageNet's WordNet ids come back too."""
    from kerascope.classification import classify

    out = export_model(lite0, tmp_path / "lite0.keras").path
    back = load_model(out)
    assert back.convention == lite0.convention and back.cam_layer == lite0.cam_layer
    assert back.labels == lite0.labels
    paths = [photo_paths["chelsea"], photo_paths["coffee"]]
    (want, got) = ([[(p.index, p.probability) for p in r.predictions]
                    for r in classify(paths, model=m, top=3)] for m in (lite0, back))  # fmt: skip
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    assert np.abs(np.array(got)[..., 1] - np.array(want)[..., 1]).max() <= 1e-4


def test_write_record_keeps_the_other_members_and_the_mode(t1, tmp_path):
    path = tmp_path / "m.keras"
    shutil.copy(t1 / "model.keras", path)
    os.chmod(path, 0o640)
    with zipfile.ZipFile(path) as archive:
        before = {n: archive.read(n) for n in archive.namelist()}
    write_record(path, {"classes": ["a", "b", "c"]})
    with zipfile.ZipFile(path) as archive:
        after = {n: archive.read(n) for n in archive.namelist()}
    assert list(after) == list(before)
    assert after["config.json"] == before["config.json"]
    assert after["model.weights.h5"] == before["model.weights.h5"]
    assert json.loads(after["metadata.json"])["kerascope"] == {"classes": ["a", "b", "c"]}
    assert (path.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]  # no temp file left


@pytest.mark.parametrize(
    ("record", "why"),
    [({"classes": 5}, "its 'classes' is not a list of names"),
     ({"classes": ["a", "b", "c"], "class_ids": ["1"]}, "its 'class_ids' do not match"),
     ({"classes": ["a", "b", "c"], "input_convention": {"resize": "pad"}}, "squash or crop"),
     ({"classes": ["a", "b", "c"], "multilabel": {"labels": ["a"], "thresholds": []}},
      "one threshold in [0, 1] per label"),
     ({"classes": ["a", "b", "c"], "multilabel": {"labels": ["a", "b", "c"],
                                                  "thresholds": ["0.5", 0.5, 0.5]}},
      "one threshold in [0, 1] per label"),
     ({"classes": ["a", "b", "c"], "multilabel": {"labels": ["a", "b", "c"],
                                                  "thresholds": [float("nan"), 2, 0.5]}},
      "one threshold in [0, 1] per label")],
)  # fmt: skip
def test_a_damaged_record_is_a_warning_and_ignored(t1, tmp_path, caplog, record, why):
    path = tmp_path / "damaged.keras"
    shutil.copy(t1 / "model.keras", path)
    write_record(path, record)
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        assert read_record(path) is None
        clf = load_model(path)
    assert [name for _, name in clf.labels] == ["class_0", "class_1", "class_2"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("record in its metadata.json is damaged" in m and why in m for m in messages)


def test_a_record_of_other_classes_is_refused_naming_it(t1, tmp_path):
    path = tmp_path / "other.keras"
    shutil.copy(t1 / "model.keras", path)
    write_record(path, {"classes": ["a", "b"]})
    with pytest.raises(ModelFileError, match=r"^the kerascope record in '.*other\.keras' \(its "
                       r"metadata\.json\) lists 2 classes but the model outputs 3$"):  # fmt: skip
        load_model(path)


# --- files kerascope cannot run ------------------------------------------------------------------


ONNX_LINE = ("kerascope: error: '{}' is an ONNX export: kerascope runs .keras files and run "
             "folders; run the .onnx with onnxruntime (examples/onnx_predict.py)")  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "classify"])
def test_an_onnx_file_is_one_line_saying_how_to_run_it(tmp_path, test3, capsys, command):
    """Before: Keras's "File format not supported ... use keras.layers.TFSMLayer(...)"."""
    onnx_file = tmp_path / "t1.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x09kerascope")  # what matters is the name
    argv = (["predict", str(onnx_file), str(test3 / "cat"), "-o", "-"] if command == "predict"
            else ["classify", str(test3 / "cat"), "--model", str(onnx_file)])  # fmt: skip
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [ONNX_LINE.format(onnx_file)]


def test_other_files_keras_cannot_read_are_one_line(t1, tmp_path):
    zipped = tmp_path / "model.zip"
    shutil.copy(t1 / "model.keras", zipped)
    with pytest.raises(ModelFileError, match=r"only under a \.keras name; rename or copy it"):
        load_model(zipped)
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"\x80\x02 not a model")
    with pytest.raises(ModelFileError, match=r"not a Keras model file") as info:
        load_model(junk)
    assert "TFSMLayer" not in str(info.value)


def test_a_legacy_h5_file_has_no_record_and_no_warning(tmp_path, caplog):
    """The review found every legacy .h5 load warning "cannot read its metadata.json"."""
    import h5py

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = []
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        assert read_record(path) is None
    assert not caplog.records


def test_a_stray_labels_json_of_other_classes_gives_way_to_the_record(exported, tmp_path, caplog):
    """The review found an exported file refused for a 2-name labels.json lying beside it."""
    path = Path(shutil.copy(exported, tmp_path / "exp.keras"))
    (tmp_path / "labels.json").write_text(json.dumps(["x", "y"]))
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        clf = load_model(path)
    assert [name for _, name in clf.labels] == read_record(path)["classes"]
    assert any("lists 2 classes but the model outputs 3" in r.getMessage() for r in caplog.records)
