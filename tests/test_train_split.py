"""Split training: the frozen prefix on the inference engine, the rest in Keras.

The split must be exact (one step on the suffix = one step on the whole graph), save the whole
network, reach the whole graph's accuracy on real photos, and resume like an unbroken run.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from kerascope.data.affine import random_affine
from kerascope.data.augment import AugmentConfig
from kerascope.inference import compiled
from kerascope.report import read_history
from kerascope.testing import grey_photo_crops
from kerascope.training import recipes, train
from kerascope.training.split import split_model
from tests.test_train import StopAfter, make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), n=24)


def _photo_batch(skimage_data, size: int, n: int = 8) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(1)
    out = []
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg") * (n // 4):
        photo = Image.open(skimage_data / name).convert("RGB")
        w, h = photo.size
        s = int(min(w, h) * rng.uniform(0.5, 0.9))
        x, y = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
        out.append(np.asarray(photo.crop((x, y, x + s, y + s)).resize((size, size))))
    return np.stack(out)


def _weights(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


@pytest.mark.backends
@pytest.mark.parametrize(
    ("stage", "head"),
    [(0, None), (1, None), (1, ["gmp", "dense:32", "dropout:0", "dense:16"])],
    ids=["transfer-head", "finetune-stage2", "finetune-stage2-dense-head"],
)
def test_one_step_on_the_split_equals_one_step_on_the_whole_graph(stage, head, skimage_data):
    recipe = recipes.get_recipe("finetune")
    keras.utils.set_random_seed(0)
    model = recipes.build_model(recipe, 4, (64, 64), None, 0, "efficientnet_lite0", dropout=0.0,
                                head=head)  # fmt: skip
    recipes.prepare_stage(model, stage, 0.2)
    x = _photo_batch(skimage_data, 64)
    y = np.array([0, 1, 2, 3] * 2)
    before = _weights(model)

    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    model.train_on_batch(x.astype("float32"), y)
    whole = _weights(model)
    for v, value in zip(model.weights, before, strict=True):
        v.assign(value)

    parts = split_model(model)
    assert (parts.cut is None) == (stage == 0)
    # The prefix on the Keras engine: this checks the cut itself. (onnxruntime's forward differs
    # from Keras's by ~1e-5, which a step of this size amplifies to ~1e-2 on some weights; the
    # onnx prefix is checked by the saved-model and accuracy tests below.)
    features = compiled(parts.prefix, engine="keras")(x)
    parts.suffix.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    parts.suffix.train_on_batch(features, y)
    split = _weights(model)

    moved = max(float(np.max(np.abs(w - b))) for w, b in zip(whole, before, strict=True))
    assert moved > 1e-2  # the step really changed the weights
    changed = [i for i, (w, b) in enumerate(zip(whole, before, strict=True)) if np.any(w != b)]
    assert changed == [i for i, (s, b) in enumerate(zip(split, before, strict=True))
                       if np.any(s != b)]  # fmt: skip
    for w, s in zip(whole, split, strict=True):
        np.testing.assert_allclose(s, w, atol=1e-4)


@pytest.mark.backends
@pytest.mark.slow  # 7-15 s each: out of make test-fast's loop (make test runs it)
@pytest.mark.parametrize("recipe", ["transfer", "finetune"])
def test_split_run_saves_the_whole_network(recipe, shapes, tmp_path):
    from kerascope.zoo.models import load_model

    run = tmp_path / recipe
    fine_tune = {"unfreeze": "blocks_15_expand_conv"} if recipe == "finetune" else {}
    result = train(shapes, recipe=recipe, output=run, epochs=1, image_size=64, batch_size=16,
                   progress=False, **fine_tune)  # fmt: skip
    reloaded = load_model(run).model
    parts = split_model(result.model)
    x = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3)).astype("uint8")
    composite = keras.ops.convert_to_numpy(parts.suffix(compiled(parts.prefix)(x)))
    saved = keras.ops.convert_to_numpy(reloaded(x.astype("float32"), training=False))
    np.testing.assert_allclose(saved, composite, atol=1e-4)
    assert parts.cut == (None if recipe == "transfer" else "blocks_15_expand_conv")
    assert not (run / "backup").exists()


@pytest.mark.slow
def test_split_reaches_the_whole_graph_accuracy_on_real_photos(tmp_path):
    data = grey_photo_crops(tmp_path / "crops")
    # 64 px and two epochs: the whole graph's Keras steps are most of the cost; measured split
    # = whole graph 0.958 (transfer), 0.875 (finetune), and their losses equal
    budget = dict(image_size=64, progress=False, augment=False)
    for recipe, epochs in (("transfer", 2), ("finetune", [1, 1])):
        top = {"unfreeze": 0.2} if recipe == "finetune" else {}  # two stages: head, top
        whole = train(data, recipe=recipe, output=tmp_path / f"{recipe}-keras", epochs=epochs,
                      engine="keras", **budget, **top)  # fmt: skip
        split = train(data, recipe=recipe, output=tmp_path / f"{recipe}-split", epochs=epochs,
                      engine="auto", **budget, **top)  # fmt: skip
        print(f"{recipe}: whole graph {whole.val_accuracy:.3f}, split {split.val_accuracy:.3f}")
        assert split.val_accuracy >= whole.val_accuracy - 0.02
        assert split.val_accuracy >= 0.75  # chance is 1/3
        for a, b in zip(whole.history, split.history, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)  # exact up to float noise


@pytest.mark.slow
def test_split_resume_in_stage_two_reproduces_an_unbroken_run(shapes, tmp_path):
    kwargs = dict(recipe="finetune", epochs=[1, 2], image_size=32, batch_size=16,
                  unfreeze="blocks_15_expand_conv")  # fmt: skip
    whole = train(shapes, output=tmp_path / "whole", progress=False, **kwargs)
    run = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=run, callbacks=[StopAfter(1)], progress=False, **kwargs)
    state = json.loads((run / "run_state.json").read_text())
    assert state["completed_stages"] == 1 and state["stage"] == 2
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2]
    resumed = train(resume=run, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


class BestFiles(keras.callbacks.Callback):
    """After kerascope's own callbacks, each epoch: its validation loss, the trained (suffix)
    variables by path, the token of best.weights.h5 and whether best.trained.npz exists."""

    def __init__(self, run):
        super().__init__()
        self.run, self.rows = run, []

    def on_epoch_end(self, epoch, logs=None):
        import h5py

        with h5py.File(self.run / "best.weights.h5", "r") as f:
            token = json.loads(f.attrs["kerascope_best"])["token"]
        trained = {v.path: keras.ops.convert_to_numpy(v).copy() for v in self.model.weights}
        part = (self.run / "best.trained.npz").is_file()
        self.rows.append((float(logs["val_loss"]), trained, token, part))


@pytest.mark.slow
def test_a_split_stage_writes_the_whole_network_once_and_then_its_trained_variables(
    shapes, tmp_path
):
    """A better epoch of a split stage writes only the variables it trains (the prefix is
    frozen); the saved model is still the best epoch's, after a Ctrl-C and resume too."""
    from kerascope.zoo.models import load_model

    kwargs = dict(recipe="transfer", epochs=4, image_size=32, batch_size=16, progress=False)
    run = tmp_path / "whole"
    seen = BestFiles(run)
    train(shapes, output=run, callbacks=[seen], **kwargs)
    losses = [row[0] for row in seen.rows]
    better = [i for i, loss in enumerate(losses) if loss < min(losses[:i], default=np.inf)]
    assert len(better) >= 2, losses  # the case under test: a second best epoch in the stage
    assert len({row[2] for row in seen.rows}) == 1  # one whole-network file for the stage
    assert [row[3] for row in seen.rows] == [i >= better[1] for i in range(4)]
    saved = {v.path: keras.ops.convert_to_numpy(v) for v in load_model(run).model.weights}
    best = seen.rows[better[-1]][1]
    trained = [path for path in best if path in saved and path.endswith(("kernel", "bias"))]
    assert trained
    for path in trained:
        np.testing.assert_array_equal(saved[path], best[path])
    assert not (run / "best.trained.npz").exists()

    broken = tmp_path / "broken"  # stopped after epoch 2: its best so far in the .npz
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=broken, callbacks=[StopAfter(1)], **kwargs)
    assert (broken / "best.trained.npz").is_file() == (better[1] == 1)
    train(resume=broken, progress=False)
    resumed = load_model(broken).model.weights
    for got, (path, want) in zip(resumed, saved.items(), strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5, atol=1e-6,
                                   err_msg=path)  # fmt: skip


@pytest.mark.slow
def test_features_recipe_is_a_standard_split_run_that_resumes_exactly(shapes, tmp_path):
    """Two frozen backbones concatenated: the split trainer runs them once, the run folder is
    every recipe's, and an interrupted run continues to the unbroken run's numbers."""
    from kerascope.zoo.models import load_model

    kwargs = dict(recipe="features", backbone="efficientnet_lite0,efficientnet_lite1",
                  epochs=3, image_size=64, batch_size=16, progress=False)  # fmt: skip
    whole = train(shapes, output=tmp_path / "whole", **kwargs)
    run = whole.run_dir
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "curves.png",
                 "report.md", "run_state.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert not (run / "backup").exists() and not (run / "best.weights.h5").exists()
    config = whole.config
    assert config["backbone"] == ["efficientnet_lite0", "efficientnet_lite1"]
    assert (config["layer"], config["pool"], config["augment"]) == (None, "avg", None)
    assert config["stages"] == [{"optimizer": "adam", "lr": 1e-3, "epochs": 3}]
    assert json.loads((run / "run_state.json").read_text())["status"] == "done"
    assert "efficientnet_lite0 + efficientnet_lite1" in (run / "report.md").read_text()
    print(f"features on shapes: val accuracy {whole.val_accuracy:.3f}")
    assert whole.val_accuracy >= 0.9

    names = [layer.name for layer in whole.model.layers]
    assert names == ["image", "efficientnet_lite0", "efficientnet_lite1", "concat",
                     "head_dropout", "predictions"]  # fmt: skip
    assert [w.name for w in whole.model.trainable_weights] == ["kernel", "bias"]
    parts = split_model(whole.model)
    assert parts.cut is None and parts.prefix.output_shape == (None, 1280 + 1280)
    assert [layer.name for layer in parts.suffix.layers][1:] == ["head_dropout", "predictions"]
    x = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3)).astype("uint8")
    composite = keras.ops.convert_to_numpy(parts.suffix(compiled(parts.prefix)(x)))
    saved = keras.ops.convert_to_numpy(load_model(run).model(x.astype("float32"), training=False))
    np.testing.assert_allclose(saved, composite, atol=1e-4)

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=broken, callbacks=[StopAfter(0)], **kwargs)
    assert json.loads((broken / "run_state.json").read_text())["status"] == "interrupted"
    assert [r["epoch"] for r in read_history(broken / "history.csv")] == [1]
    resumed = train(resume=broken, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


def test_split_cuts_an_ensemble_after_its_frozen_branches():
    """Resizes, frozen nested models and their concatenation form the prefix; the random
    Dropout and the trainable Dense the suffix; a trainable-free model is not split."""
    L = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    branches = []
    for size in (8, 12):
        x = keras.Input((size, size, 3))
        body = keras.Model(x, L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x)), name=f"b{size}")
        body.trainable = False
        branches.append(body(L.Resizing(size, size, name=f"resize_{size}")(inputs)))
    x = L.Dropout(0.5, name="drop")(L.Concatenate(name="concat")(branches))
    model = keras.Model(inputs, L.Dense(3, name="dense")(x))
    parts = split_model(model)
    assert [layer.name for layer in parts.prefix.layers][1:] == [
        "resize_8", "resize_12", "b8", "b12", "concat"]  # fmt: skip
    assert [layer.name for layer in parts.suffix.layers][1:] == ["drop", "dense"]
    assert parts.suffix.get_layer("dense") is model.get_layer("dense")
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    whole = keras.ops.convert_to_numpy(model(pixels, training=False))
    split = keras.ops.convert_to_numpy(parts.suffix(parts.prefix(pixels), training=False))
    np.testing.assert_allclose(split, whole, atol=1e-6)
    scratch = recipes.build_model(recipes.get_recipe("lenet"), 3, (32, 32), None, 0)
    assert split_model(scratch) is None  # its prefix would be a weightless Rescaling only


def test_progress_prints_an_estimate_and_img_per_second(shapes, tmp_path, capsys):
    train(shapes, recipe="transfer", output=tmp_path / "run", epochs=3, image_size=48,
          batch_size=16, augment=False)  # fmt: skip
    out = capsys.readouterr().out
    assert "split training: frozen prefix on onnx" in out
    # epochs of a few steps are timed on epoch 2, past compilation, for the epochs left
    assert "per epoch, about" in out and "for the 1 epoch(s) left" in out
    lines = [line for line in out.splitlines() if line.strip().startswith("epoch ")]
    # the prefix ran once: the rate is the head's on stored outputs, and says so
    assert len(lines) == 3 and all("img/s on cached features" in line for line in lines)


def test_random_affine_is_seeded_and_keeps_the_picture(skimage_data):
    x = _photo_batch(skimage_data, 96)
    augment = random_affine(AugmentConfig(), seed=3)
    a, b, c = augment(x, 0, 0), augment(x, 0, 0), augment(x, 1, 0)
    assert a.dtype == np.uint8 and a.shape == x.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # (seed, epoch, batch) decide
    assert not np.array_equal(a, x)
    # "nearest" fill: no black borders appear where the photo has none
    assert a[:, :2].min() > 0 or x[:, :2].min() == 0
    flip = random_affine(AugmentConfig(0, 0, 0, 0, 0, horizontal_flip=True), seed=0)(x, 0, 0)
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1])
               for f, i in zip(flip, x, strict=True))  # fmt: skip
    none = random_affine(AugmentConfig(0, 0, 0, 0, 0, horizontal_flip=False), seed=0)(x, 0, 0)
    assert np.array_equal(none, x)
    # a small rotation keeps the centre of the picture nearly where it was
    small = random_affine(AugmentConfig(5, 0, 0, 0, 0, horizontal_flip=False), seed=0)(x, 0, 0)
    centre = (slice(None), slice(40, 56), slice(40, 56))
    assert np.mean(np.abs(small[centre].astype(int) - x[centre])) < 20


def test_fast_convs_equal_keras():
    import jax

    from kerascope.fast_convs import fast_convs

    if keras.backend.backend() != "jax":
        pytest.skip("a JAX-only formulation")
    rng = np.random.default_rng(0)
    cases = [
        (keras.layers.DepthwiseConv2D, 5, 1, "same", (7, 7)),
        (keras.layers.DepthwiseConv2D, 3, 2, "same", (15, 16)),
        (keras.layers.DepthwiseConv2D, 5, 2, "valid", (14, 14)),
        (keras.layers.DepthwiseConv2D, 3, 1, "valid", (9, 8)),
        (lambda k, **kw: keras.layers.Conv2D(12, k, **kw), 1, 1, "same", (7, 9)),
        (lambda k, **kw: keras.layers.Conv2D(12, k, **kw), 3, 2, "same", (8, 8)),  # original
    ]
    for make, k, stride, padding, (height, width) in cases:
        layer = make(k, strides=stride, padding=padding)
        x = rng.normal(size=(2, height, width, 8)).astype("float32")
        expected = np.asarray(layer(x))
        kernel = layer.weights[0].value

        def grad(kern, inputs, layer=layer):
            out, _ = layer.stateless_call([kern, *layer.trainable_variables[1:]], [], inputs)
            return keras.ops.sum(out**2)

        ref = jax.grad(grad)(kernel, x)
        with fast_convs():
            got = np.asarray(jax.jit(lambda v, layer=layer: layer(v))(x))
            fast = jax.grad(grad)(kernel, x)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-4, atol=1e-3)
    from keras.src.backend.jax import nn

    # restored after the block: the user's own Keras code is untouched
    assert nn.depthwise_conv.__module__ == nn.conv.__module__ == "keras.src.backend.jax.nn"


@pytest.mark.slow
def test_a_stage_resumes_with_the_trainer_its_backup_was_made_by(shapes, tmp_path, monkeypatch):
    """A backup of the split head does not load into the whole graph, nor the reverse: a run
    started on a CPU (split) and resumed where auto means the whole graph (a GPU), or with
    another engine, was called damaged, with advice to delete good work. Auto now follows the
    backup; an engine asked for that cannot load it is one line."""
    from kerascope.errors import RunError

    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    kwargs = dict(recipe="transfer", epochs=3, image_size=32, batch_size=16, progress=False)
    for first, other in ((None, "keras"), ("keras", "onnx")):
        run = tmp_path / f"run-{first}"
        with pytest.raises(KeyboardInterrupt):
            train(shapes, output=run, engine=first, callbacks=[StopAfter(1)], **kwargs)
        trainer = json.loads(next((run / "backup").rglob("*.json")).read_text())["trainer"]
        assert trainer == ("split" if first is None else "whole")
        with pytest.raises(RunError, match="stage 1's backup .* was trained .*: resume without"):
            train(resume=run, engine=other, progress=False)
        resumed = train(resume=run, progress=False)  # auto: as the backup was trained
        assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    run = tmp_path / "scratch-onnx"  # nothing frozen to split: whole under every engine
    with pytest.raises(KeyboardInterrupt):
        train(shapes, output=run, engine="onnx", recipe="scratch", epochs=2, image_size=32,
              batch_size=16, progress=False, callbacks=[StopAfter(0)])  # fmt: skip
    resumed = train(resume=run, engine="onnx", progress=False)  # the same engine: no refusal
    assert [r["epoch"] for r in resumed.history] == [1, 2]
