"""Training recipes on generated and real-photo folders: accuracy, run files, resume, reload.

Datasets are tiny and made in ``tmp_path`` so the whole file runs in a few minutes on 2 CPU
cores: coloured shapes (separable, for "does it learn at all") and crops of scikit-image's
real photos (for "does a pretrained backbone beat training from scratch").
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageDraw

from kerascope.report import read_history
from kerascope.testing import grey_photo_crops
from kerascope.training import train
from kerascope.training.heads import unfreeze_start
from kerascope.training.recipes import class_weights, get_recipe

SHAPE_COLOURS = {"circle": (220, 60, 60), "square": (60, 200, 60), "triangle": (70, 90, 230)}


def make_shapes(root: Path, n: int = 40, size: int = 64, seed: int = 0) -> Path:
    """Circles, squares and triangles, each class in its own colour, random size and place."""
    rng = np.random.default_rng(seed)
    for name, colour in SHAPE_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            background = tuple(int(v) for v in rng.integers(0, 70, 3))
            fill = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in colour)
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            r = rng.uniform(0.2, 0.4) * size
            x, y = rng.uniform(r, size - r, 2)
            if name == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            elif name == "square":
                draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
            image.save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"))


class StopAfter(keras.callbacks.Callback):
    """Simulates Ctrl-C at the end of epoch ``epoch`` (0-based, counted across stages)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow  # 25 s
def test_scratch_learns_separable_shapes(shapes, tmp_path):
    run = tmp_path / "run"
    result = train(shapes, recipe="scratch", output=run, epochs=12, image_size=64,
                   augment=False, class_weight="auto", progress=False)  # fmt: skip
    print(f"scratch on shapes: val accuracy {result.val_accuracy:.3f}")
    assert result.val_accuracy >= 0.95
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "curves.png",
                 "report.md"):  # fmt: skip
        assert (run / name).is_file(), name
    assert not (run / "backup").exists() and not (run / "best.weights.h5").exists()
    assert json.loads((run / "labels.json").read_text()) == {"classes": list(SHAPE_COLOURS)}
    config = result.config
    assert config["recipe"] == "scratch" and config["backend"] == keras.backend.backend()
    assert config["classes"] == list(SHAPE_COLOURS) and config["data"] == str(shapes.resolve())
    assert config["stages"] == [{"optimizer": "rmsprop", "lr": 1e-3, "epochs": 12}]
    assert config["counts"]["validation"] == {c: 8 for c in SHAPE_COLOURS}
    history = read_history(run / "history.csv")
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert "validation accuracy" in (run / "report.md").read_text()
    layer_types = [type(layer).__name__ for layer in result.model.layers]
    assert layer_types[:3] == ["InputLayer", "Rescaling", "Conv2D"]  # saved without augmentation
    with pytest.raises(ValueError, match="already holds a finished run"):
        train(shapes, recipe="scratch", output=run)  # never overwrites a finished run


def test_resume_after_interrupt_matches_unbroken_run(shapes, tmp_path):
    kwargs = dict(recipe="lenet", epochs=2, image_size=32, progress=False)
    whole = train(shapes, output=tmp_path / "whole", **kwargs)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=broken, callbacks=[StopAfter(0)], **kwargs)
    assert [r["epoch"] for r in read_history(broken / "history.csv")] == [1]
    assert (broken / "backup" / "stage1" / "epoch1.seeds.npz").is_file()
    assert json.loads((broken / "run_state.json").read_text())["status"] == "interrupted"
    resumed = train(resume=broken, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    # augmentation seeds, optimizer state and batch order are restored: the same numbers
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="already finished"):
        train(resume=broken, progress=False)


def test_resume_keeps_the_optimizer_and_schedule_and_refuses_other_ones(shapes, tmp_path):
    """The blog's ``Adam(lr, decay=lr / EPOCHS)``; a resume continues its decay where the
    backup stands, and refuses another optimizer or schedule in one line naming it."""
    run = tmp_path / "run"
    kwargs = dict(recipe="lenet", epochs=2, image_size=32, optimizer="adam", lr=1e-3,
                  lr_schedule="inverse-time:0.05", progress=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=run, callbacks=[StopAfter(0)], **kwargs)
    for option, said in ((dict(optimizer="sgd"), "--optimizer sgd: the run was started with "
                          "adam lr=0.001, inverse-time:0.05 schedule"),
                         (dict(lr_schedule="cosine"), "--lr-schedule cosine"),
                         (dict(head="gap"), "--head")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            train(resume=run, progress=False, **option)
    result = train(resume=run, progress=False, optimizer="adam")  # the same: accepted
    steps = -(-sum(result.config["counts"]["train"].values()) // result.config["batch_size"])
    assert [r["lr"] for r in result.history] == pytest.approx(
        [1e-3 / (1 + 0.05 * steps), 1e-3 / (1 + 0.05 * 2 * steps)], rel=1e-5)  # fmt: skip
    assert result.config["stages"] == [{"optimizer": "adam", "lr": 1e-3, "epochs": 2,
                                        "schedule": "inverse-time:0.05"}]  # fmt: skip
    assert "adam lr=0.001, inverse-time:0.05 schedule" in (run / "report.md").read_text()


@pytest.mark.backends
@pytest.mark.slow  # 9-18 s: out of make test-fast's loop (make test runs it)
def test_transfer_saves_a_model_that_reloads_identically(shapes, tmp_path):
    from kerascope.classification import classify
    from kerascope.zoo.models import load_model

    run = tmp_path / "transfer"
    result = train(shapes, recipe="transfer", output=run, epochs=1, image_size=64,
                   batch_size=16, progress=False)  # fmt: skip
    model = result.model
    names = [layer.name for layer in model.layers]
    assert names[1:] == ["efficientnet_lite0", "avg_pool", "head_dropout", "predictions"]
    base = model.get_layer("efficientnet_lite0")
    assert not any(w.trainable for w in base.weights)
    clf = load_model(run)
    assert [name for _, name in clf.labels] == list(SHAPE_COLOURS)
    assert clf.input_size == (64, 64)
    x = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    after = keras.ops.convert_to_numpy(clf.model(x, training=False))
    assert np.max(np.abs(before - after)) <= 1e-6
    paths = sorted((shapes / "circle").iterdir())[:3]
    results = classify(paths, model=run / "model.keras", top=1)
    assert [r.ok for r in results] == [True] * 3
    try:
        from kerascope.cam.base import find_layer
    except ImportError:
        return
    assert find_layer(clf.model).name == "conv_head_relu6"  # the backbone's last conv


@pytest.mark.slow
def test_transfer_beats_scratch_on_real_photos(tmp_path):
    data = grey_photo_crops(tmp_path / "crops")
    budget = dict(epochs=2, image_size=96, progress=False)
    scratch = train(data, recipe="scratch", output=tmp_path / "scratch", **budget)
    transfer = train(data, recipe="transfer", output=tmp_path / "transfer", **budget)
    print(f"photo crops, 3 classes, 2 epochs: scratch {scratch.val_accuracy:.3f}, "
          f"transfer {transfer.val_accuracy:.3f}")  # fmt: skip
    assert transfer.val_accuracy >= 0.75  # chance is 1/3
    assert transfer.val_accuracy >= scratch.val_accuracy + 0.2


@pytest.mark.slow
def test_finetune_resumes_in_its_second_stage(shapes, tmp_path):
    run = tmp_path / "finetune"
    kwargs = dict(recipe="finetune", epochs=[1, 2], image_size=32, unfreeze="blocks_15_expand_conv")
    kwargs.update(optimizer="rmsprop,sgd", lr=[1e-3, 1e-4])  # the Keras guide's constant rates
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=run, callbacks=[StopAfter(1)], progress=False, **kwargs)
    state = json.loads((run / "run_state.json").read_text())
    assert state["completed_stages"] == 1 and state["stage"] == 2
    assert (run / "backup" / "stage2").is_dir()
    result = train(resume=run, progress=False)
    assert [(r["epoch"], r["stage"]) for r in result.history] == [(1, 1), (2, 2), (3, 2)]
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 1e-4, 1e-4])
    base = result.model.get_layer("efficientnet_lite0")
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert "blocks_15_expand_conv" in trainable and "conv_head" in trainable
    assert "blocks_14_project_conv" not in trainable
    assert not any(n.startswith("bn") or "_bn" in n for n in trainable)  # BN stays frozen


def test_weights_files_build_no_reference_layer_per_layer(tmp_path, monkeypatch):
    """Keras 3's ``get_attr_skipset`` stores its set under another key than it reads, so every
    layer saved or loaded built a reference ``Layer()``: ~40 % of each per-epoch weights file
    (checkpoints.fast_keras_saving). Now none is built, and the file still round-trips."""
    from keras.src.layers import layer as layer_module

    from kerascope.training.checkpoints import weights_h5
    from kerascope.training.recipes import build_model

    model = build_model(get_recipe("lenet"), 3, (16, 16), None, seed=0)
    weights_h5(model)  # the first save in a process computes each set once
    built = []

    class Counting(layer_module.Layer):
        def __init__(self, *args, **kwargs):
            built.append(type(self))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(layer_module, "Layer", Counting)  # what get_attr_skipset imports
    data = weights_h5(model)
    path = tmp_path / "saved.weights.h5"
    path.write_bytes(data)
    model.load_weights(path)
    monkeypatch.undo()
    assert built == []
    other = build_model(get_recipe("lenet"), 3, (16, 16), None, seed=1)
    other.load_weights(path)
    for got, want in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_models_take_raw_pixels_and_carry_no_augmentation():
    """Augmentation is the trainers' (kerascope.data.augment), never a layer: what trains is
    what is saved; a model switched to bfloat16 for training is saved in float32."""
    from kerascope.data.augment import AugmentConfig
    from kerascope.training.recipes import build_model, inference_model, set_precision

    recipe = get_recipe("lenet")
    model = build_model(recipe, 5, (32, 32), recipe.augment, seed=0)
    assert [layer.name for layer in model.layers[:2]] == ["image", "rescale"]
    assert model.output_shape == (None, 5)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    set_precision(model, "bfloat16")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"  # the softmax stays float32
    assert model.get_layer("conv1").kernel.dtype == "float32"  # master weights
    mixed = keras.ops.convert_to_numpy(model(x, training=False))
    assert mixed.dtype == np.float32 and np.abs(mixed - before).max() < 0.05
    plain = inference_model(model)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), before, atol=1e-6)
    assert AugmentConfig().horizontal_flip and not recipe.augment.horizontal_flip


def test_unfreeze_fraction_aligns_to_blocks_and_an_int_is_a_layer_index():
    from kerascope.zoo.layers import numbered_layers
    from kerascope.zoo.models import build

    base = build("efficientnet_lite0", weights=None, include_top=False, input_shape=(32, 32, 3))
    names = [layer.name for layer in base.layers]
    start = unfreeze_start(base, 0.2)
    assert names[start].startswith("blocks_") and names[start].endswith("expand_conv")
    assert unfreeze_start(base, "0.2") == start
    numbered = dict(numbered_layers(base))  # the preprocessing layer left out of the count
    assert base.layers[unfreeze_start(base, 3)] is numbered[3]  # an index: exact, not aligned
    assert unfreeze_start(base, "3") == unfreeze_start(base, 3)
    assert unfreeze_start(base, "blocks_15_expand_conv") == names.index("blocks_15_expand_conv")
    assert unfreeze_start(base, "all") == 1
    with pytest.raises(ValueError, match="no layer 'blocks_15_expand'; close matches: "
                       "blocks_15_expand_conv"):  # fmt: skip
        unfreeze_start(base, "blocks_15_expand")
    last = len(numbered) - 1
    with pytest.raises(ValueError, match=f"numbered 0..{last} .* give 1..{last}, a fraction"):
        unfreeze_start(base, last + 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        unfreeze_start(base, 1.0)


def test_unfreeze_index_counts_layers_as_keras_applications_does():
    """The InceptionV3 guide's "train from layer 249" (the top two inception blocks) means
    the same here, although kerascope's model has a preprocessing layer Keras's has not."""
    import keras

    from kerascope.training.heads import freeze, keras_index, unfreeze_top
    from kerascope.zoo.models import build

    base = build("inception_v3", weights=None, include_top=False, input_shape=(75, 75, 3))
    plain = keras.applications.InceptionV3(weights=None, include_top=False,
                                           input_shape=(75, 75, 3))  # fmt: skip
    assert plain.layers[248].name == "mixed8"
    start = unfreeze_start(base, 249)
    assert base.layers[start - 1].name == "mixed8" and keras_index(base, start) == 249
    freeze(base)
    trained = unfreeze_top(base, 249)
    expected = [
        layer.name
        for layer in plain.layers[249:]
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(trained) == len(expected) == 18  # mixed9 and mixed10: 9 convolutions each
    assert base.get_layer("mixed8").trainable is False
    assert not any(layer.trainable for layer in base.layers[:start] if layer.weights)


def test_head_parts_parse_check_and_build():
    from kerascope.training.heads import check_head, classifier_head, parse_head

    assert parse_head(" GAP, dense:1024 ") == ["gap", "dense:1024"]
    assert parse_head(["flatten", "dense:256", "dropout:0.50"]) == [
        "flatten", "dense:256", "dropout:0.5"]  # fmt: skip
    for bad, said in (("gap,dens:256", "unknown part 'dens:256'"), ("dense:0", "number of units"),
                      ("dropout:1.5", "rate in [0, 1)"), ("gap:2", "unknown part 'gap:2'"),
                      ("", "head is empty")):  # fmt: skip
        with pytest.raises(ValueError, match=said.replace("[", r"\[").replace(")", r"\)")):
            parse_head(bad)
    with pytest.raises(ValueError, match="start the head with gap"):
        check_head(["dense:64"], spatial=True)
    with pytest.raises(ValueError, match="vectors already"):
        check_head(["gap"], spatial=False)
    check_head(["dropout"], spatial=False)

    maps = keras.Input((4, 4, 8))
    default = keras.Model(maps, classifier_head(maps, 3, dropout=0.3))
    assert [layer.name for layer in default.layers[1:]] == ["avg_pool", "head_dropout",
                                                            "predictions"]  # fmt: skip
    assert default.get_layer("head_dropout").rate == 0.3
    parts = ["gmp", "dense:16", "dropout", "dense:8", "dropout:0.1"]
    model = keras.Model(maps, classifier_head(maps, 3, 0.3, parts, seed=0))
    assert [(layer.name, type(layer).__name__) for layer in model.layers[1:]] == [
        ("max_pool", "GlobalMaxPooling2D"), ("fc1", "Dense"), ("head_dropout", "Dropout"),
        ("fc2", "Dense"), ("head_dropout_2", "Dropout"), ("predictions", "Dense")]  # fmt: skip
    assert model.get_layer("head_dropout").rate == 0.3 and model.get_layer("fc2").units == 8
    assert model.get_layer("fc1").activation.__name__ == "relu"
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_optimizers_and_the_blogs_adam_decay():
    """``inverse-time:D`` is Keras 2's ``Adam(lr, decay=D)``: lr / (1 + D * step)."""
    from kerascope.training.optimizers import check_schedule, make_optimizer

    sgd = make_optimizer("SGD", 1e-4)
    assert type(sgd).__name__ == "SGD" and float(sgd.momentum) == pytest.approx(0.9)
    assert float(make_optimizer("sgd", 1e-2, momentum=0.5).momentum) == 0.5
    assert type(make_optimizer("adadelta", 1.0)).__name__ == "Adadelta"
    adam = make_optimizer("adam", 1e-3, schedule="inverse-time:0.01")
    decayed = keras.ops.convert_to_numpy(adam._learning_rate(200))
    assert float(decayed) == pytest.approx(1e-3 / (1 + 0.01 * 200), rel=1e-6)
    cosine = make_optimizer("rmsprop", 0.1, schedule="cosine", steps=50)
    assert float(keras.ops.convert_to_numpy(cosine._learning_rate(50))) == pytest.approx(0.0)
    halfway = [float(keras.ops.convert_to_numpy(cosine._learning_rate(i))) for i in (24, 25)]
    assert sum(halfway) / 2 == pytest.approx(0.05)  # each step at its middle: 24.5 and 25.5
    with pytest.raises(ValueError, match="unknown optimizer 'nadam'; use rmsprop, adam, sgd"):
        make_optimizer("nadam", 1e-3)
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        check_schedule("step")
    assert check_schedule("constant") is None and check_schedule("Inverse-Time:1e-4") == (
        "inverse-time:0.0001")  # fmt: skip


def test_class_weights_balance_classes():
    weights = class_weights("auto", ["a", "b"], {"a": 30, "b": 10})
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert class_weights({"b": 3}, ["a", "b"], {"a": 1, "b": 1}) == {0: 1.0, 1: 3.0}
    with pytest.raises(ValueError, match="unknown class"):
        class_weights({"c": 3}, ["a", "b"], {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("resnet")


@pytest.mark.parametrize("workers", [1, 2])
def test_each_epoch_feeds_one_permutation_from_its_first_batch(workers):
    """Keras builds the loss and metrics from a batch it takes from the feed itself; with the
    feed's thread pool every epoch was then shifted by that batch and mixed two epochs'
    orders (here: 1-5 of the first, 0-4 of the next). `build_before_fit` builds them first."""
    from kerascope.training.stage import build_before_fit

    fed = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            with contextlib.suppress(Exception):  # symbolic while Keras builds: no value
                fed.append(int(keras.ops.convert_to_numpy(x)[0, 0]))
            return x

    class Feed(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
            self.epoch = 0

        def __len__(self):
            return 10

        def __getitem__(self, index):
            time.sleep(0.01)  # the threads' prefetch runs ahead of the steps, as in training
            value = np.full((2, 3), 100 * self.epoch + index, "float32")
            return value, np.zeros((2, 1), "float32")

        def on_epoch_end(self):
            self.epoch += 1

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(Probe()(inputs)))
    model.compile("sgd", "mse", run_eagerly=True)
    feed = Feed()
    build_before_fit(model, feed)
    fed.clear()
    model.fit(feed, epochs=2, verbose=0, shuffle=False)  # Keras starts the feed's next epoch
    assert fed == [*range(100, 110), *range(200, 210)]
