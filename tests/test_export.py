"""`kerascope export`: ONNX and .keras files that run without kerascope, checked against Keras.

The real-model tests export EfficientNet-Lite0 (offline weights) and a small transfer run, and
compare onnxruntime with `kerascope.classify` on scikit-image's photos. The slow tests make a
clean virtualenv (no kerascope) once per session and run the exported files there, as a user's
deployment machine would: its packages are the test environment's own (keras, jax, numpy,
onnxruntime, pillow), reached through a ``.pth`` line, so it needs no network and no install
(kerascope's editable install is itself a ``.pth`` file in that folder, which Python only reads
in a site directory: it stays out). ``KERASCOPE_TEST_CLEAN_VENV=pypi`` installs them from PyPI
instead (about a minute, online), to try the newest releases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.export import ExportError, check_images, export_model, output_format
from kerascope.images import fit, load_image
from kerascope.zoo.models import Classifier

from .conftest import load_rgb
from .test_train import SHAPE_COLOURS, make_shapes

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ROOT = Path(__file__).resolve().parents[1]


def with_export(mp: pytest.MonkeyPatch) -> None:
    """Register `export` on the real parser, even before cli.py wires it in."""
    from kerascope import cli
    from kerascope.cli_export import add_export_command

    build = cli.build_parser

    def build_parser() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "export" not in sub.choices:
            add_export_command(sub)
        return parser

    mp.setattr(cli, "build_parser", build_parser)


def run_cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`kerascope ARGV` in-process: exit code and stderr."""
    from kerascope import cli

    with_export(monkeypatch)
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def probabilities(results, classes: int) -> np.ndarray:
    """Full probability vectors back from `classify(..., top=classes)` results."""
    out = np.zeros((len(results), classes))
    for row, result in enumerate(results):
        assert result.ok, result.error
        for p in result.predictions:
            out[row, p.index] = p.probability
    return out


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def meta(sess) -> dict[str, str]:
    return sess.get_modelmeta().custom_metadata_map


def tiny_model(mode: str | None = None, extra=None, size: int = 24) -> Classifier:
    """Input -> [ImagePreprocess(mode)] -> conv -> [extra] -> pool -> softmax over 3 classes."""
    from kerascope.zoo.preprocess import ImagePreprocess

    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    preprocess = ImagePreprocess(mode, name="preprocess") if mode else layers.Rescaling(1 / 255)
    x = preprocess(inputs)
    x = layers.Conv2D(6, 3, strides=2, activation="relu", name="conv")(x)
    if extra is not None:
        x = extra(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"tiny_{mode}")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape) for w in model.get_weights()])
    labels = [("a", "ant"), ("b", "bee"), ("c", "cat")]
    return Classifier(model, f"tiny_{mode}", (size, size), labels)


# --- EfficientNet-Lite0 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory) -> Path:
    """`kerascope export efficientnet_lite0 -o lite0.onnx`, through the CLI entry point."""
    from kerascope import cli

    out = tmp_path_factory.mktemp("export") / "lite0.onnx"
    with pytest.MonkeyPatch.context() as mp:
        with_export(mp)
        assert cli.main(["export", "efficientnet_lite0", "-o", str(out)]) == 0
    return out


def test_lite0_onnx_matches_classify_at_batch_1_and_3(lite0_onnx, lite0, photo_paths):
    from kerascope.classification import classify
    from kerascope.inference import compiled

    proto = onnx.load(str(lite0_onnx))
    onnx.checker.check_model(proto, full_check=True)
    sess = session(lite0_onnx)
    (image,) = sess.get_inputs()
    assert image.name == "image" and image.type == "tensor(uint8)"
    assert image.shape[1:] == [224, 224, 3] and isinstance(image.shape[0], str)  # dynamic batch
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    info = meta(sess)
    classes, ids = json.loads(info["classes"]), json.loads(info["class_ids"])
    assert len(classes) == len(ids) == 1000
    assert (ids[285], classes[285]) == ("n02124075", "Egyptian_cat")
    assert json.loads(info["input_size"]) == [224, 224] and info["input_dtype"] == "uint8"
    assert json.loads(info["fit"]) == {
        "resize": "crop",
        "crop_fraction": 0.875,
        "interpolation": "bicubic",
    }  # what classify does for Lite0, so a runtime without kerascope can do the same
    assert info["model"] == "efficientnet_lite0"
    assert json.loads(info["checked"])["max_abs_diff_vs_keras"] <= 1e-4

    paths = [photo_paths[n] for n in PHOTOS[:3]]
    batch = np.stack([fit(load_image(p), (224, 224), lite0.convention) for p in paths])
    expected = probabilities(classify(paths, model=lite0, top=1000), 1000)
    (three,) = sess.run(None, {"image": batch})
    ones = np.concatenate([sess.run(None, {"image": x[None]})[0] for x in batch])
    assert three.shape == (3, 1000)
    assert np.abs(three - expected).max() <= 1e-4
    assert np.abs(ones - expected).max() <= 1e-4
    keras_probs = compiled(lite0.model, "keras")(batch)  # Keras itself, not the onnx engine
    assert np.abs(three - keras_probs).max() <= 1e-4
    assert int(np.argmax(three[0])) in CATS


def test_float_input_gives_the_same_probabilities(lite0, lite0_onnx, tmp_path, photo_paths):
    result = export_model(lite0, tmp_path / "lite0-float.onnx", input_type="float")
    assert result.input_type == "float32" and result.max_abs_diff <= 1e-4
    assert result.checked_on == [f"{n}.{'jpg' if n == 'rocket' else 'png'}" for n in PHOTOS]
    floats, ints = session(result.path), session(lite0_onnx)
    assert floats.get_inputs()[0].type == "tensor(float)"
    assert meta(floats)["input_dtype"] == "float32"
    batch = np.stack([load_rgb(photo_paths[n], 224) for n in PHOTOS])
    a = floats.run(None, {"image": batch.astype(np.float32)})[0]
    b = ints.run(None, {"image": batch})[0]
    assert np.abs(a - b).max() <= 1e-6
    with pytest.raises(Exception, match="(?i)type"):  # the float file refuses uint8 pixels
        floats.run(None, {"image": batch})


# --- a trained run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A transfer run (frozen Lite0 + new head), one epoch at 32 px on generated shapes."""
    from kerascope.training import train

    root = tmp_path_factory.mktemp("run")
    data = make_shapes(root / "shapes", n=8, size=32)
    train(data, recipe="transfer", output=root / "run", epochs=1, image_size=32, batch_size=8,
          progress=False)  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def shape_images(run_dir) -> list[Path]:
    data = run_dir.parent / "shapes"
    return [sorted((data / name).iterdir())[0] for name in SHAPE_COLOURS]


@pytest.mark.slow  # 5-12 s: out of make test-fast's loop (make test runs it)
def test_trained_run_exports_its_labels_and_matches_classify(run_dir, shape_images, tmp_path):
    from kerascope.classification import classify

    result = export_model(run_dir, tmp_path / "run.onnx", check=shape_images)
    assert result.classes == 3 and result.input_size == (32, 32)
    assert result.checked_on == [p.name for p in shape_images]
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    sess = session(result.path)
    info = meta(sess)
    assert json.loads(info["classes"]) == list(SHAPE_COLOURS)  # labels.json of the run
    assert json.loads(info["class_ids"]) == ["0", "1", "2"]
    assert json.loads(info["input_size"]) == [32, 32]
    batch = np.stack([load_rgb(p, 32) for p in shape_images])
    expected = probabilities(classify(shape_images, model=run_dir, top=3), 3)
    assert np.abs(sess.run(None, {"image": batch})[0] - expected).max() <= 1e-4
    assert np.abs(sess.run(None, {"image": batch[1:2]})[0] - expected[1:2]).max() <= 1e-4


# --- .keras without kerascope's layer -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf", "none"])
def test_keras_export_replaces_image_preprocess(mode, tmp_path):
    """The file's config names only Keras classes; plain load_model gives the same output.

    The model is nested in another, as a zoo backbone is in a transfer run.
    """
    import zipfile

    inner = tiny_model(mode)
    inputs = keras.Input((24, 24, 3), name="image")
    clf = Classifier(keras.Model(inputs, inner.model(inputs)), "outer", (24, 24), inner.labels)
    result = export_model(clf, tmp_path / "tiny.keras")
    assert result.format == "keras" and result.max_abs_diff <= 1e-6
    config = zipfile.ZipFile(result.path).read("config.json").decode()
    assert "ImagePreprocess" not in config and "kerascope" not in config
    loaded = keras.saving.load_model(result.path, custom_objects={}, compile=False)
    x = np.random.default_rng(1).integers(0, 256, (5, 24, 24, 3)).astype(np.uint8)
    want = clf.model.predict(x.astype(np.float32), verbose=0)
    got = loaded.predict(x.astype(np.float32), verbose=0)
    assert np.abs(got - want).max() <= 1e-6


def test_keras_export_refuses_what_plain_keras_cannot_load(tmp_path, monkeypatch):
    import kerascope.export as export

    monkeypatch.setattr(export, "portable_model", lambda model: model)  # forget to replace it
    out = tmp_path / "tiny.keras"
    with pytest.raises(ExportError, match=r"layer 'preprocess' .*ImagePreprocess"):
        export_model(tiny_model("caffe"), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temp file left either


@keras.saving.register_keras_serializable(package="test_export")
class Squash(keras.layers.Layer):
    """A user's own layer: neither onnx nor plain Keras knows it."""

    def call(self, x):
        return x / (1.0 + keras.ops.abs(x))


def test_keras_export_names_a_non_keras_layer(tmp_path):
    clf = tiny_model(extra=Squash(name="my_squash"))
    with pytest.raises(ExportError, match=r"'my_squash' \(Squash\).*not a Keras layer"):
        export_model(clf, tmp_path / "x.keras")


# --- errors -------------------------------------------------------------------------------------


def test_unsupported_layer_is_one_line_naming_layer_and_class(tmp_path, monkeypatch, capsys):
    clf = tiny_model(extra=keras.layers.Conv2DTranspose(4, 3, name="upsample"))
    clf.model.save(tmp_path / "up.keras")
    names = [name for _, name in clf.labels]  # else a warning line: no class names found
    (tmp_path / "labels.json").write_text(json.dumps({"classes": names}))
    out = tmp_path / "up.onnx"
    code, err = run_cli(["export", str(tmp_path / "up.keras"), "-o", str(out)], monkeypatch, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'upsample' (Conv2DTranspose)" in err and "nothing written" in err
    assert not out.exists()
    # The same model exports to .keras: every layer is kept.
    code, err = run_cli(["export", str(tmp_path / "up.keras"), "-o", str(tmp_path / "k.keras")],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert "wrote" in err and "k.keras" in err and "max |Δ probability| vs Keras" in err
    assert (tmp_path / "k.keras").is_file()


def test_onnx_that_disagrees_with_keras_is_not_written(tmp_path, monkeypatch):
    """A converter bug (simulated: one weight off) stops the export; an older file is kept."""
    from kerascope.onnx_export import export as convert

    real = convert.keras_to_onnx

    def off_by_a_bit(model, **kwargs):
        clone = keras.models.clone_model(model)
        weights = model.get_weights()
        weights[-1] = weights[-1] + np.array([0.0, 0.0, 0.01], np.float32)  # a bias
        clone.set_weights(weights)
        return real(clone, **kwargs)

    out = tmp_path / "tiny.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(convert, "keras_to_onnx", off_by_a_bit)
    with pytest.raises(ExportError, match=r"differs from Keras by .* on '.*' \(limit 0.0001\)"):
        export_model(tiny_model("tf"), out, overwrite=True)
    assert out.read_bytes() == b"previous export"
    monkeypatch.setattr(convert, "keras_to_onnx", real)
    assert export_model(tiny_model("tf"), out, overwrite=True).max_abs_diff <= 1e-6


def test_only_image_classifiers_are_exported(tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, features)  # a feature map, not class probabilities
    clf = Classifier(model, "features", (8, 8), [(str(i), str(i)) for i in range(4)])
    with pytest.raises(ExportError, match=r"one \(N, classes\) output.*\(None, 6, 6, 4\)"):
        export_model(clf, tmp_path / "f.onnx")
    assert list(tmp_path.iterdir()) == []


def test_format_comes_from_the_extension(tmp_path, monkeypatch, capsys):
    assert output_format("a/model.ONNX") == "onnx"
    assert output_format("model.keras") == "keras"
    assert output_format("model.bin", "onnx") == "onnx"
    with pytest.raises(ExportError, match="cannot tell the format of 'model.h5'"):
        output_format("model.h5")
    with pytest.raises(ExportError, match="must end in .keras"):
        output_format("model.bin", "keras")
    code, err = run_cli(["export", "efficientnet_lite0", "-o", "x.keras", "--input", "float"],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "--input applies to ONNX exports only" in err
    code, err = run_cli(["export", "no_such_net", "-o", str(tmp_path / "x.onnx")], monkeypatch,
                        capsys)  # fmt: skip
    assert code == 2 and "unknown model 'no_such_net'" in err
    assert not (tmp_path / "x.onnx").exists()


def test_an_output_no_file_can_be_written_to_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, capsys
):
    """Before: -o afile/m.onnx loaded, converted and checked the model, then a FileExistsError
    traceback; --format onnx -o m.keras wrote ONNX under a Keras name; -o - a file named -."""
    import kerascope.zoo.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.onnx").mkdir()
    for args, said in (
        (["-o", str(tmp_path / "afile" / "m.onnx")], "is a file, not a folder"),
        (["-o", str(tmp_path / "adir.onnx")], "it is a directory"),
        (["-o", "-", "--format", "onnx"], "not standard output"),
        (["-o", str(tmp_path / "m.keras"), "--format", "onnx"], "name it .onnx"),
    ):
        code, err = run_cli(["export", "efficientnet_lite0", *args], monkeypatch, capsys)
        assert code == 2 and said in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.onnx", "afile"]


def test_check_images_without_scikit_image(monkeypatch, skimage_data):
    import kerascope.export as export
    from kerascope.images import load_image, resize

    images, names = check_images((40, 60))
    assert names == ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    assert images.shape == (4, 40, 60, 3) and images.dtype == np.uint8
    chelsea = resize(load_image(skimage_data / "chelsea.png"), (40, 60))  # as kerascope does
    np.testing.assert_array_equal(images[0], chelsea)
    monkeypatch.setattr(export, "_sample_photos", lambda: [])
    generated, names = check_images((40, 60))
    assert names == [f"generated-{i}" for i in range(1, 5)] and generated.shape == (4, 40, 60, 3)
    assert generated.std() > 30  # varied pictures, not a flat grey


# --- a clean virtualenv: no kerascope -----------------------------------------------------------


@pytest.fixture(scope="session")
def clean_venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A virtualenv where keras, jax, numpy, onnxruntime and pillow import and kerascope does
    not: this environment's packages through a ``.pth`` line (before: ``pip install`` from
    PyPI, 55 s of the suite and a network the CI does not have), or PyPI's with
    ``KERASCOPE_TEST_CLEAN_VENV=pypi``."""
    import sysconfig

    root = tmp_path_factory.mktemp("clean-venv")
    venv = root / "venv"
    python = venv / "bin" / "python"
    if os.environ.get("KERASCOPE_TEST_CLEAN_VENV") == "pypi":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "keras", "jax", "numpy", "onnxruntime",
             "pillow"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr[-2000:]
    else:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        ask = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        where = subprocess.run([str(python), "-c", ask], check=True, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
        (Path(where) / "test-packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    home = root / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}  # fmt: skip
    # The suite's JAX compilation cache (conftest.py): plain Keras builds a loaded model with
    # its own initializers, one XLA compilation per weight shape (21 s of CPU for Lite0; 7 s
    # warm). JAX's setting, not kerascope's: the venv stays as clean.
    env.update({k: v for k, v in os.environ.items() if k.startswith("JAX_PERSISTENT_CACHE_")
                or k == "JAX_COMPILATION_CACHE_DIR"})  # fmt: skip
    probe = subprocess.run([str(python), "-c", "import kerascope"], env=env, cwd=root,
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "No module named 'kerascope'" in probe.stderr
    return python, env


def run_clean(clean_venv, args: list[str], cwd: Path) -> str:
    python, env = clean_venv
    done = subprocess.run([str(python), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


LOAD_AND_PREDICT = """
import sys, keras, numpy as np
for name in sys.argv[1:]:  # plain Keras: no custom_objects, safe_mode on
    model = keras.saving.load_model(name + ".keras")
    np.save(name + "-probabilities.npy", model.predict(np.load(name + ".npy"), verbose=0))
"""


@pytest.mark.slow
def test_keras_exports_load_in_a_clean_venv(clean_venv, lite0, run_dir, shape_images, tmp_path,
                                            photo_paths):  # fmt: skip
    """Lite0, a trained run and a model with caffe preprocessing, opened by plain Keras."""
    from kerascope.classification import classify

    tiny = tiny_model("caffe", size=32)
    cases = {
        "lite0": (lite0, [photo_paths[n] for n in PHOTOS], 224),
        "run": (run_dir, shape_images, 32),
        "caffe": (tiny, [photo_paths["coffee"], photo_paths["astronaut"]], 32),
    }
    expected = {}
    for name, (model, paths, size) in cases.items():
        assert export_model(model, tmp_path / f"{name}.keras").max_abs_diff <= 1e-4
        convention = getattr(model, "convention", None)  # a run directory: squash, as trained
        batch = np.stack([fit(load_image(p), (size, size), convention) for p in paths])
        np.save(tmp_path / f"{name}.npy", batch)
        if model is tiny:
            expected[name] = tiny.model.predict(batch.astype(np.float32), verbose=0)
        else:
            classes = 1000 if model is lite0 else 3
            expected[name] = probabilities(classify(paths, model=model, top=classes), classes)
    (tmp_path / "predict.py").write_text(LOAD_AND_PREDICT)
    run_clean(clean_venv, ["predict.py", *cases], tmp_path)
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}-probabilities.npy")
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, name
    assert int(np.argmax(np.load(tmp_path / "lite0-probabilities.npy")[0])) in CATS


@pytest.mark.slow
def test_onnx_example_runs_in_a_clean_venv(clean_venv, lite0_onnx, lite0, photo_paths, tmp_path):
    from kerascope.classification import classify

    chelsea = photo_paths["chelsea"]
    script = ROOT / "examples" / "onnx_predict.py"
    out = run_clean(clean_venv, [str(script), str(lite0_onnx), str(chelsea), "--top", "3"],
                    tmp_path)  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[1] for r in rows] == ["1", "2", "3"]
    _, _, index, wnid, name, prob = rows[0]
    assert int(index) in CATS
    best = classify(chelsea, model=lite0, top=3)[0].predictions
    assert [int(r[2]) for r in rows] == [p.index for p in best]
    assert (wnid, name) == (best[0].class_id, best[0].name)
    assert abs(float(prob) - best[0].probability) <= 1e-4
