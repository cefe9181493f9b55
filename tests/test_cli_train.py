"""The train-side commands end to end, as a user runs them: train, then use the run everywhere."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest

from kerascope.cli import main

from .test_train import make_shapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny scratch run on separable shapes (its accuracy is asserted in test_train)."""
    root = tmp_path_factory.mktemp("cli")
    data = make_shapes(root / "data", n=16, size=48)
    run = root / "run"
    code = main(["train", str(data), "--recipe", "scratch", "--epochs", "2", "--image-size", "48",
                 "--batch-size", "8", "-o", str(run)])  # fmt: skip
    assert code == 0
    return data, run


@pytest.mark.slow
def test_run_directory_has_everything(trained):
    _, run = trained
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "curves.png",
                 "report.md"):  # fmt: skip
        assert (run / name).is_file(), name
    classes = json.loads((run / "labels.json").read_text())
    assert isinstance(classes, list | dict)


@pytest.mark.slow
def test_trained_run_works_with_evaluate_predict_classify_explain(trained, tmp_path, capsys):
    data, run = trained
    assert main(["evaluate", str(run), str(data), "-o", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    confusion = metrics["confusion"]
    assert sum(map(sum, confusion)) == metrics["n"]
    assert (tmp_path / "eval" / "confusion.png").is_file()

    pics = tmp_path / "pics"
    shutil.copytree(data, pics)
    broken = next(pics.rglob("*.png")).with_name("broken.png")
    broken.write_bytes(b"\x89PNG truncated")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(pics), "-o", str(out)]) == 1  # one unreadable file
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len([p for p in pics.rglob("*") if p.is_file()])
    assert [r for r in rows if r["path"].endswith("broken.png")][0]["error"]

    image = str(next(data.rglob("*.png")))
    capsys.readouterr()
    assert main(["classify", image, "--model", str(run / "model.keras"), "-f", "json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["predictions"][0]["name"] in json.dumps(json.loads((run / "labels.json")
                                                                     .read_text()))  # fmt: skip
    assert main(["explain", image, "--model", str(run), "-o", str(tmp_path / "ex")]) == 0
    assert list((tmp_path / "ex").glob("*-output.jpg"))


def test_train_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("x")
    assert main(["train", str(tmp_path), "--recipe", "scratch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerascope: error:") and "Traceback" not in err
    assert main(["train"]) == 2


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [("--epochs", "0", "epochs must be at least 1, got 0"),
     ("--batch-size", "0", "batch_size must be at least 1, got 0"),
     ("--lr", "0", "lr must be above 0, got 0.0"),
     # NaN trained a NaN model and saved it as the best
     ("--lr", "nan", "lr must be a finite number, got nan"),
     ("--mixup", "nan", "mixup is a Beta(a, a) parameter, at least 0 (0: off), got nan"),
     ("--patience", "-1", "patience must be at least 0, got -1"),
     ("--rotation", "nan", "rotation must be >= 0, got nan")],
)  # fmt: skip
def test_explicit_zeros_are_refused_not_read_as_the_default(tmp_path, capsys, option, value,
                                                            said):  # fmt: skip
    """`--epochs 0` used to train the recipe's 50 epochs: a zero is a value, never "unset"."""
    data = make_shapes(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    code = main(["train", str(data), "--recipe", "scratch", option, value, "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_image_sides_take_numpy_numbers_and_arrays():
    import numpy as np

    from kerascope.training.settings import image_sides

    assert image_sides(np.int64(64)) == [64, 64] == image_sides(np.array([64, 64]))
    assert image_sides((32, 48)) == [32, 48]


@pytest.mark.parametrize(
    ("option", "said"),
    [({"image_size": "64"}, "image_size must be a whole number or (height, width), got '64'"),
     ({"image_size": (64, 64, 3)}, "(height, width), got (64, 64, 3)"),
     ({"image_size": 0}, "image_size must be at least 1, got 0"),
     ({"epochs": 1.5}, "epochs must be a whole number, got 1.5"),
     ({"epochs": True}, "epochs must be a whole number, got True"),
     ({"batch_size": 8.5}, "batch_size must be a whole number, got 8.5"),
     ({"patience": 2.5}, "patience must be a whole number, got 2.5"),
     ({"class_weight": {"a": -1}}, "class_weight['a'] must be above 0, got -1"),
     ({"class_weight": {"a": 0}}, "class_weight['a'] must be above 0, got 0"),  # counted as padding
     ({"class_weight": "heavy"}, "class_weight must be None, 'auto' or a dict, got 'heavy'")],
)  # fmt: skip
def test_the_api_refuses_values_the_cli_cannot_give(tmp_path, option, said):
    """Before: "64" trained at 6x4 px, 8.5 was cut to 8, True read as 1 epoch."""
    from kerascope.errors import ConfigError
    from kerascope.training import train

    data = make_shapes(tmp_path / "data", n=4, size=32)
    with pytest.raises(ConfigError, match=re.escape(said)):
        train(data, recipe="scratch", output=tmp_path / "run", progress=False, **option)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("tiny"), n=4, size=32)


@pytest.mark.parametrize(
    ("args", "said"),
    [(["--head", "gap,dens:256"], "head: unknown part 'dens:256'; use comma-separated gap"),
     (["--head", "dense:256"], "start the head with gap, gmp or flatten"),
     (["--recipe", "features", "--head", "gap"], "vectors already (pooled by --pool)"),
     (["--recipe", "scratch", "--head", "gap"], "recipe 'scratch' has its own network"),
     (["--optimizer", "nadam"], "unknown optimizer 'nadam'; use rmsprop, adam, sgd, adadelta"),
     (["--optimizer", "adam", "--momentum", "0.9"], "momentum is SGD's"),
     (["--lr-schedule", "step"], "unknown lr schedule 'step'; use constant"),
     (["--lr", "1e-3,x"], "'1e-3,x' is not a number or a comma-separated list"),
     (["--recipe", "finetune", "--unfreeze", "500"],
      "unfreeze index 500 is out of range for 'efficientnet_lite0': its layers are numbered"),
     (["--recipe", "finetune", "--unfreeze", "1.5"], "between 0 and 1, got 1.5"),
     (["--recipe", "finetune", "--unfreeze", "blocks_15_expand"],
      "no layer 'blocks_15_expand'; close matches: blocks_15_expand_conv"),
     (["--unfreeze", "0.3"], "recipe 'transfer' has no such stage"),
     (["--weights", "no-such.h5"], "no-such.h5' does not exist"),
     (["--recipe", "lenet", "--no-augment", "--zoom", "0.1"], "--no-augment turns augmentation"),
     (["--recipe", "lenet", "--zoom", "1.5"], "zoom must be below 1 (a fraction), got 1.5"),
     (["--backbone", "vgg16", "--image-size", "16"], "'vgg16' cannot run on 16x16 images"),
     (["--recipe", "scratch", "--image-size", "21"], "the scratch network cannot run on 21x21"),
     (["--recipe", "lenet", "--image-size", "3"], "the lenet network cannot run on 3x3 images"),
     (["--precision", "fp8"], "--precision"),
     (["--model", "vgg16", "--image-size", "16"], "'vgg16' cannot run on 16x16 images")],
)  # fmt: skip
def test_bad_training_choices_are_one_line_before_anything_is_written(tiny, tmp_path, capsys,
                                                                      args, said):  # fmt: skip
    run = tmp_path / "run"
    try:
        code = main(["train", str(tiny), *args, "-o", str(run)])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_a_pretrained_backbone_on_tiny_images_is_warned_of(tiny, tmp_path, capsys):
    assert main(["train", str(tiny), "--image-size", "16", "--epochs", "1", "--no-augment",
                 "-o", str(tmp_path / "run")]) == 0  # fmt: skip
    assert "16x16 images are too small for a pretrained backbone" in capsys.readouterr().err


def test_augmentation_options_change_the_recipes_and_are_saved(tiny, tmp_path):
    import yaml

    from kerascope.training.settings import changed_augmentation

    kept = changed_augmentation("lenet", {"zoom": 0.0})  # one option: the rest stays lenet's
    assert (kept.rotation, kept.width_shift, kept.zoom, kept.horizontal_flip) == (30, 0.1, 0, False)
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--recipe", "lenet", "--epochs", "1", "--rotation", "10",
                 "--width-shift", "0", "--height-shift", "0", "--shear", "0", "--zoom", "0",
                 "--no-flip", "-o", str(run)]) == 0  # fmt: skip
    augment = yaml.safe_load((run / "config.yaml").read_text())["augment"]
    assert augment == {**augment, "rotation": 10.0, "width_shift": 0.0, "height_shift": 0.0,
                       "shear": 0.0, "zoom": 0.0, "horizontal_flip": False}  # fmt: skip


def test_precision_is_chosen_printed_and_saved_and_epochs_record_img_per_second(tiny, tmp_path,
                                                                               capsys):  # fmt: skip
    """float16 (loss scaling) on the whole-graph path, one batch larger than the data (all of
    it one padded batch); the run says its precision, config.yaml keeps it, history.csv has
    each epoch's training img/s, and steady_images_per_second reads it back."""
    import yaml

    from kerascope.report import read_history
    from kerascope.training.progress import steady_images_per_second

    run = tmp_path / "run"
    assert main(["train", str(tiny), "--recipe", "lenet", "--epochs", "3", "--batch-size", "64",
                 "--engine", "keras", "--precision", "float16", "-o", str(run)]) == 0  # fmt: skip
    assert "precision: float16 (weights float32)" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == "float16"
    rates = [r["images_per_second"] for r in read_history(run / "history.csv")]
    assert len(rates) == 3 and all(r > 0 for r in rates)
    assert steady_images_per_second(run) == pytest.approx(sorted(rates[1:])[0] / 2
                                                          + sorted(rates[1:])[1] / 2)  # fmt: skip


@pytest.mark.slow
def test_features_command_caches_and_the_features_recipe_saves_one_model(tmp_path, capsys):
    data = make_shapes(tmp_path / "data", n=6, size=48)
    out = tmp_path / "f.h5"
    args = ["features", str(data), "--backbone", "efficientnet_lite0", "-o", str(out)]
    assert main(args) == 0
    assert "computed 18 row(s)" in capsys.readouterr().err
    assert main(args) == 0  # the cache answers: nothing is computed again
    assert "computed 0 row(s)" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", str(data), "--recipe", "features", "--backbone", "efficientnet_lite0",
                 "--epochs", "2", "-o", str(run)]) == 0  # fmt: skip
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "curves.png",
                 "report.md", "run_state.json"):  # fmt: skip
        assert (run / name).is_file(), name
    image = str(next(data.rglob("*.png")))
    capsys.readouterr()
    assert main(["classify", image, "--model", str(run), "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"]
    assert main(["train", "--resume", str(run)]) == 2  # resumable like any run: it is done
    assert "already finished" in capsys.readouterr().err


@pytest.mark.slow
def test_features_recipe_takes_a_layer_and_pooling(tmp_path, capsys):
    import yaml

    data = make_shapes(tmp_path / "data", n=6, size=48)
    run = tmp_path / "run"
    args = ["train", str(data), "--recipe", "features", "--backbone", "efficientnet_lite0",
            "--epochs", "1", "--image-size", "48", "-o", str(run)]  # fmt: skip
    assert main([*args, "--layer", "blocks_9_add", "--pool", "max"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["layer"], config["pool"]) == ("blocks_9_add", "max")
    from kerascope.training.split import split_model
    from kerascope.zoo.models import load_model

    assert split_model(load_model(run).model).suffix.input_shape == (None, 112)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "bad"), "--layer", "block_9_add"]) == 2
    err = capsys.readouterr().err
    assert "no layer 'block_9_add'" in err and "blocks_9_add" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    assert main(["train", str(data), "--recipe", "transfer", "--layer", "blocks_9_add"]) == 2
    assert "takes neither" in capsys.readouterr().err
