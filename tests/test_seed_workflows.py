"""The source material's transfer-learning workflows on keras.applications backbones, each as the
one command a user types.

keras.applications weights cannot be downloaded here, so each backbone's ``*_notop.h5`` is
written in Keras's own legacy layout (what ``keras.utils.get_file`` would fetch) from a model
with NumPy-drawn random weights. Random features are no ImageNet features, so the tests assert
what is true of any weights: the command runs, the files have the right shapes and layers,
the right layers train with the right optimizer, a separable toy task is learnt, the saved
model reloads and classifies raw images.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml

from kerascope.cli import main
from tests.conftest import load_rgb
from tests.test_train import make_shapes


@pytest.fixture(scope="session")
def notop():
    """``notop(name)`` writes the backbone's ``*_notop.h5`` into the weights cache (once per
    session), as Keras's legacy HDF5 writer lays it out, and returns its path; its random
    weights are drawn by NumPy from a fixed seed."""
    from keras.src.legacy.saving import legacy_h5_format

    from kerascope.config import cache_dir
    from kerascope.zoo import registry

    written: dict[str, Path] = {}

    def write(name: str) -> Path:
        if name not in written:
            spec = registry.get(name)
            state = np.random.get_state()  # the same file whatever ran before (numpy_init)
            np.random.seed(0)
            try:
                model = spec.builder_fn()(weights=None, include_top=False)
            finally:
                np.random.set_state(state)
            path = cache_dir() / spec.weights.for_top(False).filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
            written[name] = path
        return written[name]

    return write


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Coloured circles, squares and triangles: separable by any features that keep colour."""
    return make_shapes(tmp_path_factory.mktemp("seed-shapes"), n=6, size=96)


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _stage_optimizers(monkeypatch) -> list:
    """Records every optimizer a stage compiles with (the real ones, used for training)."""
    from kerascope.training import stage as stage_module

    made = []
    real = stage_module.make_optimizer

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(stage_module, "make_optimizer", spy)
    return made


def test_vgg16_bottleneck_features_at_150px(notop, shapes, tmp_path, capsys):
    """The cats-vs-dogs blog's first step: VGG16's conv base at 150 px, run once over the
    dataset, its 4x4x512 maps stored (the blog's ``bottleneck_features_train.npy``)."""
    notop("vgg16")
    store = tmp_path / "bottleneck.h5"
    assert main(["features", str(shapes), "--backbone", "vgg16", "--pool", "none",
                 "--image-size", "150", "-o", str(store)]) == 0  # fmt: skip
    assert "computed 18 row(s) of 4x4x512 features" in capsys.readouterr().err
    with h5py.File(store) as f:
        (key,) = list(f)
        assert f[key]["features"].shape == (18, 4, 4, 512)
        assert f[key].attrs["weights_file"].endswith("vgg16_weights_tf_dim_ordering_tf_kernels"
                                                     "_notop.h5")  # fmt: skip
        assert np.bincount(f[key]["label"][:]).tolist() == [6, 6, 6]
        features = f[key]["features"][:]
    assert np.isfinite(features).all() and features.max() > 0  # ReLU maps, not all zero


@pytest.mark.slow
def test_the_blogs_dense_head_learns_on_vgg16_features(notop, shapes, tmp_path):
    """The blog's second step: Flatten -> Dense 256 -> Dropout 0.5 -> Dense on those maps,
    as one command that saves a raw-image model."""
    notop("vgg16")
    run = tmp_path / "run"
    assert main(["train", str(shapes), "--recipe", "features", "--backbone", "vgg16",
                 "--pool", "none", "--image-size", "150", "--head",
                 "flatten,dense:256,dropout:0.5", "--epochs", "20", "--batch-size", "8",
                 "--patience", "20", "-o", str(run)]) == 0  # fmt: skip
    from kerascope.zoo.models import load_model

    clf = load_model(run)
    model = clf.model
    head = [layer for layer in model.layers if layer.name in
            ("head_flatten", "fc1", "head_dropout", "predictions")]  # fmt: skip
    assert [type(layer).__name__ for layer in head] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert model.get_layer("head_flatten").input.shape[1:] == (4, 4, 512)
    assert model.get_layer("fc1").units == 256 and model.get_layer("head_dropout").rate == 0.5
    assert _config(run)["head"] == ["flatten", "dense:256", "dropout:0.5"]
    report = (run / "report.md").read_text()
    assert "head: flatten -> dense 256 -> dropout 0.5 -> dense 3 softmax" in report
    # Learnt: far above chance (1/3) on the 18 images (random VGG features still carry colour).
    assert main(["evaluate", str(run), str(shapes), "--split", "all", "-o",
                 str(tmp_path / "eval")]) == 0  # fmt: skip
    accuracy = json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"]
    print(f"\nVGG16 dense head, 20 epochs: accuracy {accuracy:.3f} on the 18 images, "
          f"validation {[round(r['val_accuracy'], 3) for r in _history(run)]}")  # fmt: skip
    assert accuracy >= 0.8
    pixels = load_rgb(next((shapes / "circle").iterdir()), 150)[None].astype("float32")
    probs = keras.ops.convert_to_numpy(model(pixels))
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def _history(run: Path) -> list[dict]:
    from kerascope.report import read_history

    return read_history(run / "history.csv")


def test_vgg19_block4_pool_features_equal_the_keras_submodel(notop, shapes, tmp_path, capsys):
    """The Keras guide: VGG19 features from ``block4_pool``; compared with Keras's own VGG19
    built on the same file."""
    path = notop("vgg19")
    store = tmp_path / "f.h5"
    assert main(["features", str(shapes), "--backbone", "vgg19", "--layer", "block4_pool",
                 "--pool", "none", "--image-size", "64", "-o", str(store)]) == 0  # fmt: skip
    with h5py.File(store) as f:
        group = f["vgg19,layer=block4_pool,pool=none,size=64"]
        features, paths = group["features"][:], [p.decode() for p in group["path"][:3]]
    assert features.shape == (18, 4, 4, 512)

    reference = keras.applications.VGG19(weights=None, include_top=False,
                                         input_shape=(64, 64, 3))  # fmt: skip
    reference.load_weights(str(path))
    sub = keras.Model(reference.input, reference.get_layer("block4_pool").output)
    pixels = np.stack([load_rgb(Path(p), 64) for p in paths]).astype("float32")
    expected = keras.ops.convert_to_numpy(sub(keras.applications.vgg19.preprocess_input(pixels)))
    np.testing.assert_allclose(
        features[:3], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()
    )

    capsys.readouterr()
    assert main(["features", str(shapes), "--backbone", "vgg19", "--layer", "block4pool",
                 "-o", str(tmp_path / "g.h5")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no layer 'block4pool'" in err and "block4_pool" in err and "Traceback" not in err


@pytest.mark.slow  # 60 s
def test_frozen_resnet50_transfer_with_gap_and_dropout(notop, shapes, tmp_path, monkeypatch):
    """The blog's ResNet50 transfer: frozen base, GAP -> Dropout -> Dense."""
    notop("resnet50")
    made = _stage_optimizers(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", str(shapes), "--recipe", "transfer", "--backbone", "resnet50",
                 "--dropout", "0.5", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "-o", str(run)]) == 0  # fmt: skip
    assert [type(o).__name__ for o in made] == ["RMSprop"]
    from kerascope.zoo.models import load_model

    model = load_model(run).model
    assert [layer.name for layer in model.layers[1:]] == ["resnet50", "avg_pool", "head_dropout",
                                                          "predictions"]  # fmt: skip
    assert model.get_layer("head_dropout").rate == 0.5
    assert not any(w.trainable for w in model.get_layer("resnet50").weights)
    config = _config(run)
    assert config["dropout"] == 0.5 and config["unfreeze"] is None
    assert config["head"] == ["gap", "dropout"]  # the default head, as its parts


@pytest.mark.slow
def test_three_backbone_ensemble_is_one_raw_image_model(notop, shapes, tmp_path, capsys):
    """The blog's ResNet50 + Xception + InceptionV3 GAP features, concatenated under one head,
    saved as one model that takes raw images."""
    for name in ("resnet50", "xception", "inception_v3"):
        notop(name)
    run = tmp_path / "run"
    assert main(["train", str(shapes), "--recipe", "features", "--backbone",
                 "resnet50,xception,inception_v3", "--image-size", "75", "--epochs", "1",
                 "--batch-size", "8", "-o", str(run)]) == 0  # fmt: skip
    from kerascope.classification import classify
    from kerascope.zoo.models import load_model

    clf = load_model(run)
    assert clf.input_size == (75, 75)
    assert clf.model.get_layer("concat").output.shape[1:] == (3 * 2048,)
    photos = [next((shapes / c).iterdir()) for c in ("circle", "square", "triangle")]
    pixels = np.stack([load_rgb(p, 75) for p in photos]).astype("float32")
    probs = keras.ops.convert_to_numpy(clf.model(pixels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    results = classify(photos, model=clf, top=3)  # the run's model, loaded once above
    assert [r.ok for r in results] == [True] * 3
    assert {p.name for p in results[0].predictions} == {"circle", "square", "triangle"}


@pytest.mark.slow
def test_inception_v3_finetune_as_the_keras_guide(notop, shapes, tmp_path, monkeypatch):
    """The guide: new head GAP -> Dense 1024 -> Dense N; stage 1 the base frozen under
    RMSprop; stage 2 everything from layer 249 (the top two inception blocks) with
    SGD(1e-4, momentum 0.9)."""
    notop("inception_v3")
    made = _stage_optimizers(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", str(shapes), "--recipe", "finetune", "--backbone", "inception_v3",
                 "--head", "gap,dense:1024", "--optimizer", "rmsprop,sgd", "--lr", "1e-3,1e-4",
                 "--momentum", "0.9", "--unfreeze", "249", "--image-size", "75", "--epochs", "1",
                 "--batch-size", "8", "--no-augment", "-o", str(run)]) == 0  # fmt: skip
    assert [type(o).__name__ for o in made] == ["RMSprop", "SGD"]
    assert float(made[1].momentum) == pytest.approx(0.9)
    assert [r["lr"] for r in _history(run)] == pytest.approx([1e-3, 1e-4])
    config = _config(run)
    assert config["unfreeze"] == 249 and config["unfreeze_index"] == 249
    assert config["stages"][1] == {"optimizer": "sgd", "lr": 1e-4, "epochs": 1, "momentum": 0.9}

    from kerascope.zoo.layers import numbered_layers
    from kerascope.zoo.models import load_model

    model = load_model(run).model
    assert [layer.name for layer in model.layers[-3:]] == ["avg_pool", "fc1", "predictions"]
    assert model.get_layer("fc1").units == 1024
    numbered = numbered_layers(model.get_layer("inception_v3"))
    assert numbered[248][1].name == "mixed8"
    trains = {i for i, layer in numbered if layer.trainable and layer.weights}
    with_weights = {i for i, layer in numbered if layer.weights}
    batchnorm = {i for i, layer in numbered if isinstance(layer, keras.layers.BatchNormalization)}
    assert trains == {i for i in with_weights if i >= 249} - batchnorm
    assert "from layer index 249" in (run / "report.md").read_text()
