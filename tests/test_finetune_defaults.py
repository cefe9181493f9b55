"""Issue 21, "defaults that reach the best accuracy the time allows": finetune's gradual
unfreezing, discriminative rates, the time budget, early stopping that keeps the best weights
and the training size taken from the data. No assertion here depends on timing or on what a
random-weight network happens to predict."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from kerascope.training import budget, recipes
from kerascope.training.config_file import load_config
from kerascope.training.optimizers import layer_rates, make_optimizer, set_total_steps
from kerascope.training.settings import resolve_config

from .test_train import make_shapes


def _folder(root, size: int, n: int = 3):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), (40 * i, 90, 200)).save(root / name / f"{i}.png")
    return root


def _config(data, tmp_path, **kwargs):
    args = dict(backbone=None, epochs=None, batch_size=None, lr=None, seed=0, val_split=0.25,
                skip_bad=False, class_weight=None, unfreeze=None, augment=False,
                image_size=None, patience=None)  # fmt: skip
    args.update(kwargs)
    return resolve_config(data, "finetune", tmp_path / "run", **args)


def test_finetune_defaults_gradual_unfreezing_one_cycle_and_a_time_budget(tmp_path):
    config = _config(_folder(tmp_path / "data", 96), tmp_path)
    stages = config["stages"]
    assert [s["optimizer"] for s in stages] == ["adam"] * 3
    assert {s["schedule"] for s in stages} == {"onecycle"}
    assert [s.get("lr_ratio", 1.0) for s in stages] == [1.0, 100.0, 100.0]
    assert [s.get("unfreeze") for s in stages] == [None, None, "all"]
    assert config["unfreeze"] == 0.2  # stage 2 trains the top fifth, stage 3 everything
    assert config["epochs_rule"] == "time budget" and config["time_budget"] == 15.0
    assert config["image_size"] == [96, 96]  # the data's size, below the backbone's 224


def test_given_epochs_win_and_an_unfreeze_point_gives_the_guides_two_stages(tmp_path):
    data = _folder(tmp_path / "data", 96)
    given = _config(data, tmp_path, epochs=2, time_budget=5)
    assert given["epochs_rule"] == "epochs" and given["time_budget"] is None
    assert [s["epochs"] for s in given["stages"]] == [2, 2, 2]
    assert all("most_epochs" not in s for s in given["stages"])
    guide = _config(data, tmp_path, unfreeze=120, optimizer=["rmsprop", "sgd"], lr=[1e-3, 1e-4])
    assert len(guide["stages"]) == 2
    # another optimizer than the recipe's runs plainly: one constant rate, no ratio
    assert guide["stages"][1] == {"optimizer": "sgd", "lr": 1e-4, "epochs": 10, "momentum": 0.9,
                                  "most_epochs": 10, "share": 0.35}  # fmt: skip
    off = _config(data, tmp_path, time_budget=0)
    assert off["epochs_rule"] == "recipe" and [s["epochs"] for s in off["stages"]] == [3, 10, 20]


@pytest.mark.parametrize(("side", "size"), [(40, 64), (96, 96), (150, 128), (600, 224)])
def test_training_size_is_the_datas_up_to_the_backbones(tmp_path, side, size):
    assert _config(_folder(tmp_path / "data", side), tmp_path)["image_size"] == [size, size]


def test_plan_gives_each_stage_its_share_of_the_time_left():
    assert budget.plan_epochs(600, 10, [0.2, 0.35, 0.45], 100) == 12  # 120 s of 600
    assert budget.plan_epochs(600, 10, [0.2, 0.35, 0.45], 5) == 5  # the recipe's most
    assert budget.plan_epochs(-30, 10, [1.0], 5) == 0  # no epoch fits: the stage is skipped
    assert budget.plan_epochs(-30, 10, [1.0], 5, least=1) == 1  # the head is always trained
    assert budget.plan_epochs(15, 10, [0.2, 0.8], 5) == 1  # its share holds none, the rest one
    assert budget.plan_epochs(90, 10, [0.35, 0.45], 50) == 3  # 0.35 / 0.8 of 90 s


def test_a_later_stage_is_not_measured_when_less_than_an_epoch_of_the_last_is_left():
    config = {"stages": [{"epoch_seconds": 20.0}, {}]}
    assert budget.out_of_time(config, 1, 19.0) and not budget.out_of_time(config, 1, 21.0)
    assert not budget.out_of_time(config, 0, -5.0)  # the first stage always trains
    # measuring compiles the stage: a 1-minute budget spent 100 s compiling a stage it skipped
    config = {"stages": [{"epoch_seconds": 5.0, "measure_seconds": 30.0}, {}]}
    assert budget.out_of_time(config, 1, 11.0) and not budget.out_of_time(config, 1, 36.0)
    # a stage skipped for time: every later one is too (it measured the whole backbone)
    config = {"stages": [{"epoch_seconds": 5.0, "measure_seconds": 30.0},
                         {"epoch_seconds": 5.0, "skipped": True, "epochs": 0}, {}]}  # fmt: skip
    assert budget.out_of_time(config, 2, 20.0)


def test_a_stage_skipped_unmeasured_says_why(tmp_path, capsys):
    """It said "0.3 min left and an epoch takes ~4.1 s", as if 18 s could not hold 4.1 s: the
    reason is measuring the stage before and one epoch of it (20.3 + 4.1 s > 18 s)."""
    import time

    config = {"time_budget": 1.0, "stages": [
        {"epochs": 3, "most_epochs": 3, "epoch_seconds": 4.1, "measure_seconds": 20.3},
        {"epochs": 10, "most_epochs": 10}, {"epochs": 20, "most_epochs": 20}]}  # fmt: skip
    started = time.monotonic() - 42.0  # 18 s of the minute left
    budget.skip_stage(tmp_path, config, 1, started, progress=True)
    budget.skip_stage(tmp_path, config, 2, started, progress=True)
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("  time budget: stage skipped, 0.3 min left, less than measuring")
    assert first.endswith("(~20.3 s + ~4.1 s)")
    assert "as the stage before was" in second
    assert [s.get("epochs") for s in config["stages"]] == [3, 0, 0]


def test_a_spent_budget_trains_the_head_and_skips_the_rest(tmp_path):
    """A budget shorter than the start-up: the head's stage still trains one epoch, the
    unfreezing stages are skipped (recorded, 0 epochs), and the run finishes with a model."""
    from kerascope.training import train

    data = make_shapes(tmp_path / "shapes", n=8, size=32)
    run = train(data, recipe="finetune", output=tmp_path / "run", time_budget=0.01,
                batch_size=8, progress=False, augment=False)  # fmt: skip
    stages = run.config["stages"]
    assert [s["epochs"] for s in stages] == [1, 0, 0]
    assert [bool(s.get("skipped")) for s in stages] == [False, True, True]
    assert [row["stage"] for row in run.history] == [1]
    assert (run.run_dir / "model.keras").is_file()
    assert "skipped: the time budget was spent" in (run.run_dir / "report.md").read_text()


def test_gradual_unfreezing_trains_the_head_then_the_top_then_everything(tmp_path):
    """The stages a default finetune config resolves to, applied in order as `train` does."""
    from kerascope.training.stage import unfreeze_point

    config = _config(_folder(tmp_path / "data", 64), tmp_path)
    model = recipes.build_model(recipes.get_recipe("finetune"), 2, (64, 64), None, 0,
                                "efficientnet_lite0", backbone_weights=None)  # fmt: skip
    base = recipes.backbone_of(model)
    trained = []
    for index, stage in enumerate(config["stages"]):
        recipes.prepare_stage(model, index, unfreeze_point(config, stage))
        trained.append({v.path for v in base.trainable_variables})
    head, top, everything = trained
    all_but_bn = {v.path for layer in base.layers if layer.weights
                  and not isinstance(layer, keras.layers.BatchNormalization)
                  for v in layer.weights}  # fmt: skip
    assert head == set() and top and top < everything == all_but_bn
    first = [layer for layer in base.layers if layer.weights][0]
    assert {v.path for v in first.weights} <= everything - top  # the stem trains last
    assert all(name.startswith(("blocks_13", "blocks_14", "blocks_15", "conv_head"))
               for name in top)  # fmt: skip


@pytest.mark.slow  # 14 s
def test_discriminative_rates_scale_each_variables_update():
    """One Adam step with the rates beside one without, same gradients: each backbone
    variable moves ``multiplier`` times as far (lr/100 at the first layer, lr/10 at the last),
    the head as far."""
    model = recipes.build_model(recipes.get_recipe("finetune"), 3, (32, 32), None, 0,
                                "efficientnet_lite0", backbone_weights=None)  # fmt: skip
    recipes.prepare_stage(model, 2, "all")
    variables = model.trainable_variables
    rates = layer_rates(model, 100.0)
    start = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    grads = [keras.ops.ones(v.shape) for v in variables]
    moved = []
    for given in (rates, None):
        optimizer = make_optimizer("adam", 1e-3, rates=given)
        optimizer.apply(grads, variables)
        now = [keras.ops.convert_to_numpy(v) for v in variables]
        moved.append([n - s for n, s in zip(now, start, strict=True)])
        for v, s in zip(variables, start, strict=True):
            v.assign(s)
    ratios = {}
    for v, with_rates, plain in zip(variables, *moved, strict=True):
        ratio = float(np.mean(with_rates / plain))
        assert ratio == pytest.approx(rates.get(v.path, 1.0), rel=1e-3)
        ratios[v.path] = ratio
    backbone = [ratios[p] for p in ratios if p in rates]
    assert ratios["conv_stem/kernel"] == pytest.approx(0.01, rel=1e-3) == min(backbone)
    assert 0.09 < max(backbone) <= 0.1 + 1e-6  # the last trained layers (BatchNorm is frozen)
    assert all(ratios[p] == pytest.approx(1.0) for p in ratios if p not in rates)  # the head


def test_schedule_length_can_be_set_after_compiling():
    """A budget decides the epochs after the step is compiled: the one-cycle schedule reads
    its length from an optimizer variable, so changing it changes the rates the step uses."""
    optimizer = make_optimizer("adam", 0.01, schedule="onecycle", steps=400)
    schedule = optimizer._learning_rate
    assert float(schedule(100)) == pytest.approx(0.01, rel=1e-5)  # the peak, 1/4 of 400
    set_total_steps(optimizer, 40)
    assert schedule.total in optimizer.variables
    assert float(schedule(10)) == pytest.approx(0.01, rel=1e-3)  # now 1/4 of 40
    assert float(schedule(40)) == pytest.approx(0.01 / 1e5, rel=1e-3)  # after its last step


def test_measuring_an_epoch_leaves_every_variable_as_it_was():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = keras.layers.Dropout(0.5, seed=1)(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(make_optimizer("adam", 1e-2, schedule="onecycle", steps=20),
                  "sparse_categorical_crossentropy")  # fmt: skip
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 8)).astype("float32"), rng.integers(0, 3, 4),
                np.ones(4, "float32")) for _ in range(5)]  # fmt: skip
    model.optimizer.build(model.trainable_variables)
    every = [*model.variables, *model.optimizer.variables]
    before = [keras.ops.convert_to_numpy(v).copy() for v in every]
    seconds = budget.epoch_seconds(model, batches, batches[:2], steps=2)
    assert seconds > 0
    for v, b in zip(every, before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)


@pytest.mark.slow  # 47 s
def test_a_budgeted_run_records_its_plan_and_keeps_to_it(tmp_path):
    """Each stage's epochs are what `plan_epochs` gives for the time measured and left, as
    recorded in config.yaml; the run trains no more than that."""
    from kerascope.training import train

    data = make_shapes(tmp_path / "shapes", n=8, size=32)
    run = train(data, recipe="lenet", output=tmp_path / "run", time_budget=0.5, batch_size=8,
                patience=2, progress=False, augment=False)  # fmt: skip
    (stage,) = run.config["stages"]
    assert run.config["epochs_rule"] == "time budget"
    assert stage["epochs"] == budget.plan_epochs(stage["seconds_left"], stage["epoch_seconds"],
                                                 [1.0], stage["most_epochs"])  # fmt: skip
    assert 1 <= len(run.history) <= stage["epochs"] <= 35
    assert "(epochs from the time budget: ~" in (run.run_dir / "report.md").read_text()


def test_early_stopping_stops_and_the_saved_model_is_the_best_epoch(tmp_path):
    """Validation labels swapped against training ones: what the network learns raises the
    validation loss, so early stopping ends the run long before its epochs, and the saved
    model is the epoch with the lowest validation loss (its loss recomputed here)."""
    from kerascope.training import train
    from kerascope.zoo.models import load_model

    shapes = make_shapes(tmp_path / "shapes", n=12, size=32)
    data = tmp_path / "swapped"
    for split, names in (("train", ("circle", "square")), ("validation", ("square", "circle"))):
        for label, shape in zip(("a", "b"), names, strict=True):
            (data / split / label).mkdir(parents=True)
            files = sorted((shapes / shape).iterdir())
            for f in files[:8] if split == "train" else files[8:]:
                (data / split / label / f.name).write_bytes(f.read_bytes())
    run = train(data, recipe="lenet", output=tmp_path / "run", epochs=30, patience=2,
                batch_size=8, lr=3e-3, progress=False, augment=False)  # fmt: skip
    losses = [row["val_loss"] for row in run.history]
    best = int(np.argmin(losses))
    assert len(losses) == best + 1 + 2 < 30  # stopped two epochs after the best
    model = load_model(run.run_dir).model
    x, y = [], []
    for label in (0, 1):
        for f in sorted((data / "validation" / "ab"[label]).iterdir()):
            x.append(np.asarray(Image.open(f).convert("RGB"), "float32"))
            y.append(label)
    probs = keras.ops.convert_to_numpy(model(np.stack(x), training=False))
    loss = float(np.mean(-np.log(probs[np.arange(len(y)), y])))
    assert loss == pytest.approx(losses[best], rel=1e-3)


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_its_plan_and_its_schedule(tmp_path):
    """Killed after its second epoch and resumed: the planned epochs are not planned again, and
    the one-cycle rate after each epoch is the curve over the planned length (the schedule's
    length is restored with the optimizer)."""
    from kerascope.report import read_history
    from kerascope.training import train
    from kerascope.training.optimizers import one_cycle

    from .test_train import StopAfter

    data = make_shapes(tmp_path / "shapes", n=8, size=32)
    kwargs = dict(recipe="lenet", time_budget=1.0, batch_size=8, lr=0.01, patience=50,
                  lr_schedule="onecycle", augment=False, progress=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(data, output=tmp_path / "run", callbacks=[StopAfter(1)], **kwargs)
    planned = load_config(tmp_path / "run")["stages"][0]
    resumed = train(resume=tmp_path / "run", progress=False)
    (stage,) = resumed.config["stages"]
    assert stage == planned and stage["epochs"] >= 1
    history = read_history(tmp_path / "run" / "history.csv")
    assert [row["epoch"] for row in history] == list(range(1, stage["epochs"] + 1))
    steps = 3  # 18 training images (75 % of 24) in batches of 8
    curve = one_cycle(0.01, steps * stage["epochs"])
    for row in history:
        assert row["lr"] == pytest.approx(float(curve(row["epoch"] * steps)), rel=1e-4)


@pytest.mark.parametrize(
    ("args", "said"),
    [(["--time-budget", "-1"], "time budget must be at least 0 minutes, got -1.0"),
     (["--epochs", "1,5"], "epochs needs 3 value(s), one per stage, got [1, 5] (finetune "
      "unfreezes gradually: the head, the backbone's top, then all of it; --unfreeze POINT "
      "gives two stages)")],
)  # fmt: skip
def test_budget_and_stage_mistakes_are_one_line(tmp_path, capsys, args, said):
    from kerascope.cli import main

    data = _folder(tmp_path / "data", 64)
    code = main(["train", str(data), "--recipe", "finetune", *args, "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # 40-90 s: three stages, the last compiling the whole backbone
def test_one_step_per_stage_ends_above_chance_and_keeps_the_best_epoch(tmp_path):
    """`--epochs 1,1,1` on 24 grey photo crops at 64 px: one step per stage. Before: a
    validation loss of 3.7 (chance: ln 3 = 1.1), as the new head started over-confident on
    the large small-image features and each stage's one step ran at lr/25, the one-cycle
    curve's start. The saved model is the epoch of lowest validation loss over all stages,
    its loss recomputed from model.keras."""
    import math

    from kerascope.testing import grey_photo_crops
    from kerascope.training import train
    from kerascope.zoo.models import load_model

    data = grey_photo_crops(tmp_path / "photos", n_train=8, n_val=2, size=64)
    run = train(data, recipe="finetune", output=tmp_path / "run", epochs=[1, 1, 1],
                progress=False)  # fmt: skip
    losses = [row["val_loss"] for row in run.history]
    assert len(losses) == 3 and run.val_loss == pytest.approx(min(losses), rel=1e-6)
    assert run.val_loss < 0.6 * math.log(3) and run.val_accuracy >= 2 / 3
    assert run.best_epoch == 1 + int(np.argmin(losses))
    x, y = [], []
    for label, name in enumerate(run.classes):
        for f in sorted((data / "validation" / name).iterdir()):
            x.append(np.asarray(Image.open(f).convert("RGB"), "float32"))
            y.append(label)
    probs = keras.ops.convert_to_numpy(load_model(run.run_dir).model(np.stack(x), training=False))
    loss = float(np.mean(-np.log(probs[np.arange(len(y)), y])))
    assert loss == pytest.approx(run.val_loss, rel=1e-2)
