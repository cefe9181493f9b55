"""What a user following the seed tutorials was not told: early stopping (and ``--patience 0``),
a single ``--optimizer``/``--lr`` meeting several stages, splits read as classes, the hint for
one image given to ``features``, the layer a split stage trains from, and the commands the
run's summary suggests.

A LeNet at ``--lr 1e-12`` (no augmentation, no dropout) keeps the very same validation loss
every epoch, so early stopping ends it after exactly ``patience`` epochs past the first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from kerascope.cli import main
from kerascope.data.folders import DatasetError, scan_dataset
from kerascope.report import read_history
from kerascope.testing import cat_and_coffee


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return cat_and_coffee(tmp_path_factory.mktemp("photos") / "data", n=10, size=32)


def _train(data: Path, run: Path, *options: str) -> None:
    args = ["train", str(data), "--recipe", "lenet", "--lr", "1e-12", "--no-augment",
            "--image-size", "32", "-o", str(run), *options]  # fmt: skip
    assert main(args) == 0


def test_early_stopping_says_so_and_the_report_gives_the_epochs_run(photos, tmp_path, capsys):
    """Before: "epochs 1-6", then silence after epoch 3, and report.md said "6 epochs"."""
    run = tmp_path / "run"
    _train(photos, run, "--epochs", "6", "--patience", "2")
    out = capsys.readouterr()
    said = out.out + out.err
    assert ("stopped after epoch 3 of 6: validation loss has not improved for 2 epochs "
            "(--patience 2; 0: never stop early); the best, epoch 1, is kept") in said  # fmt: skip
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2, 3]
    report = (run / "report.md").read_text()
    assert ("3 of 6 epochs adam lr=1e-12 (stopped early: no lower validation loss for 2 "
            "epochs)") in report  # fmt: skip
    # the commands name this run and the data it read (before: "RUN DATA", "DATA")
    assert f"kerascope evaluate {run.resolve()} {photos.resolve()}" in report
    assert f"try: kerascope evaluate {run.resolve()} {photos.resolve()}" in said


def test_patience_0_trains_every_epoch_asked_for(photos, tmp_path, capsys):
    """Keras's patience 0 stopped at the first epoch without a lower loss (as its 1 does)."""
    run = tmp_path / "run"
    _train(photos, run, "--epochs", "3", "--patience", "0")
    assert "stopped after" not in capsys.readouterr().out
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2, 3]
    report = (run / "report.md").read_text()
    assert "3 epochs adam lr=1e-12;" in report and "stopped early" not in report


def test_train_help_says_what_patience_0_does(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "0: never stop early" in " ".join(capsys.readouterr().out.split())


def test_a_single_optimizer_and_lr_for_two_stages_warns_naming_each_stage(caplog):
    """finetune --optimizer sgd --lr 1e-4: stage 2 ran Adam 1e-3 without a word."""
    from kerascope.training.recipes import get_recipe
    from kerascope.training.settings import resolve_stages, stages_for

    recipe = stages_for(get_recipe("finetune"), 249)  # the guide's two stages
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        stages = resolve_stages(recipe, None, 1e-4, "sgd", None, None)
    assert [(s["optimizer"], s["lr"]) for s in stages] == [("sgd", 1e-4), ("adam", 1e-3)]
    [line] = [r.getMessage() for r in caplog.records]
    assert "--optimizer sgd --lr 0.0001 applies to the first of 2 stages only" in line
    assert "stage 1: sgd lr=0.0001 momentum 0.9; stage 2: adam lr=0.001" in line
    assert line.endswith("--optimizer sgd,sgd --lr 0.0001,0.0001")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        resolve_stages(recipe, None, [1e-3, 1e-4], "rmsprop,sgd", None, None)  # one per stage
        resolve_stages(get_recipe("transfer"), None, 1e-4, "sgd", None, None)  # one stage
    assert not caplog.records


def _folder_of_folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """``root/<outer>/<inner>/*.jpg`` crops of the two photos, three per inner folder."""
    for outer, inner in layout.items():
        for name in inner:
            crops = cat_and_coffee(root / "tmp", n=3, size=16)
            (root / outer).mkdir(parents=True, exist_ok=True)
            (crops / "cat").rename(root / outer / name)
            (crops / "coffee").rename(root / "tmp" / "unused")
            for p in (root / "tmp" / "unused").iterdir():
                p.unlink()
            (root / "tmp" / "unused").rmdir()
    (root / "tmp").rmdir()
    return root


def test_kaggle_style_splits_are_refused_not_read_as_two_classes(tmp_path):
    """kag/train2/{cats,dogs} + kag/test2/...: before, classes "train2" and "test2"."""
    kag = _folder_of_folders(tmp_path / "kag", {"train2": ["cats", "dogs"],
                                                "test2": ["cats", "dogs"]})  # fmt: skip
    with pytest.raises(DatasetError, match=r"'.*kag' looks like splits, not classes: 'test2', "
                       r"'train2' holding cats, dogs; name them train/ and test/ \(or "
                       r"validation/\)"):  # fmt: skip
        scan_dataset(kag, check_images=False)
    flat = cat_and_coffee(tmp_path / "flat", n=4, size=16)  # kag/train1/*.jpg, kag/test1/*.jpg
    (flat / "cat").rename(flat / "train1")
    (flat / "coffee").rename(flat / "test1")
    with pytest.raises(DatasetError, match="looks like splits, not classes"):
        scan_dataset(flat, check_images=False)


def test_class_folders_that_only_may_be_splits_are_a_warning(tmp_path):
    nested = _folder_of_folders(tmp_path / "nested", {"indoor": ["cats", "dogs"],
                                                      "outdoor": ["cats", "dogs"]})  # fmt: skip
    [warning] = scan_dataset(nested, check_images=False).warnings
    assert "looks like splits, not classes: 'indoor', 'outdoor' holding cats, dogs" in warning
    assert warning.endswith("(read as classes now)")
    named = cat_and_coffee(tmp_path / "named", n=4, size=16)
    cat_and_coffee(tmp_path / "more", n=4, size=16)
    (tmp_path / "more" / "cat").rename(named / "val_set")
    [warning] = scan_dataset(named, check_images=False).warnings
    assert "class folder(s) 'val_set'" in warning and "named like a split" in warning
    # classes with their own subclasses, none shared: as before, no word
    breeds = _folder_of_folders(tmp_path / "breeds", {"cats": ["siamese", "persian"],
                                                      "dogs": ["poodle", "beagle"]})  # fmt: skip
    found = scan_dataset(breeds, check_images=False)
    assert found.classes == ["cats", "dogs"] and not found.warnings


def test_features_of_one_image_points_to_batch_features(photos, capsys):
    """Before: "`kerascope predict RUN FILES` labels single images" (predict makes none)."""
    image = next((photos / "cat").iterdir())
    assert main(["features", str(image), "--backbone", "vgg16", "--pool", "none"]) != 0
    err = capsys.readouterr().err
    assert f"`kerascope batch features {image} --model vgg16 --pool none -o DIR`" in err
    assert "predict" not in err


def test_the_cut_is_shown_as_models_layers_numbers_it():
    """``conv2d_174`` was a per-session name (`models layers` lists ``conv2d_80``)."""
    from kerascope.training.stage import cut_label

    made_up = SimpleNamespace(cut="conv2d_174", cut_index=249, cut_kind="Conv2D")
    shown = cut_label(made_up, {"unfreeze": 249, "unfreeze_index": 249})
    assert shown == "layer 249 (as `kerascope models layers` numbers them)"
    assert cut_label(made_up, {"unfreeze": "conv2d_80", "unfreeze_index": 249}) == (
        "layer 249 'conv2d_80'")  # the name the user gave  # fmt: skip
    kept = SimpleNamespace(cut="block6a_expand_conv", cut_index=200, cut_kind="Conv2D")
    assert "layer 200 'block6a_expand_conv'" in cut_label(kept, {"unfreeze": 0.2})


def test_a_split_finetune_stage_knows_its_cut_index():
    """The split carries the cut's index as `models layers` lists it."""
    import keras

    from kerascope.training import recipes
    from kerascope.training.heads import keras_index, unfreeze_start
    from kerascope.training.split import split_model
    from kerascope.training.stage import cut_label

    keras.utils.set_random_seed(0)
    model = recipes.build_model(recipes.get_recipe("finetune"), 2, (32, 32), None, 0,
                                "efficientnet_lite0", backbone_weights=None)  # fmt: skip
    base = model.get_layer("efficientnet_lite0")
    index = keras_index(base, unfreeze_start(base, "blocks_15_expand_conv"))
    recipes.prepare_stage(model, 1, index)
    parts = split_model(model)
    assert (parts.cut, parts.cut_index) == ("blocks_15_expand_conv", index)
    assert cut_label(parts, {"unfreeze": index, "unfreeze_index": index}).startswith(
        f"layer {index} 'blocks_15_expand_conv'")  # fmt: skip
