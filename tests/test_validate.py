"""validate on the offline EfficientNet-Lite0 (real ported weights) and real photos that ship
in installed packages, labelled with their true ImageNet classes:

- skimage chelsea.png -> n02123045 tabby (Chelsea is a tabby; Lite0 says tiger_cat 0.39,
  tabby 3rd at 0.17: top-1 wrong, top-5 right)
- skimage coffee.png -> n07920052 espresso (Lite0: espresso 0.95, right)
- matplotlib grace_hopper.jpg -> n03763968 military_uniform (Lite0: academic_gown 0.24,
  military_uniform 3rd at 0.18: top-1 wrong, top-5 right)
- skimage camera.png (the cameraman) -> n04485082 tripod (Lite0: tripod 0.94, right)

So top-1 is 2/4 and top-5 4/4, whatever the folder layout. The 95 % Wilson intervals of 2/4
and 4/4 are the textbook values [0.150, 0.850] and [0.510, 1.000].
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kerascope.data.folders import DatasetError
from kerascope.labelled_folders import class_folders
from kerascope.validation import validate

PHOTOS = {  # file: (WordNet id, ImageNet name, a class-name folder as a person would type it)
    "chelsea.png": ("n02123045", "tabby", "Tabby"),
    "coffee.png": ("n07920052", "espresso", "espresso"),
    "grace_hopper.jpg": ("n03763968", "military_uniform", "military uniform"),
    "camera.png": ("n04485082", "tripod", "tripod"),
}


def _photo(skimage_data: Path, name: str) -> Path:
    if name == "grace_hopper.jpg":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    return skimage_data / name


def _folder(root: Path, skimage_data: Path, column: int) -> Path:
    for name, labels in PHOTOS.items():
        (root / labels[column]).mkdir(parents=True)
        shutil.copy(_photo(skimage_data, name), root / labels[column] / name)
    return root


@pytest.fixture(scope="module")
def imagenet_layout(tmp_path_factory, skimage_data) -> Path:
    return _folder(tmp_path_factory.mktemp("imagenet") / "val", skimage_data, 0)


@pytest.fixture(scope="module")
def by_wnid(imagenet_layout, lite0, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "out"
    return validate(lite0, imagenet_layout, output=out, heatmaps=False, top_losses=2)


def test_imagenet_layout_gives_the_expected_top1_and_top5(by_wnid):
    r = by_wnid
    assert r.n == 4 and not r.unreadable
    assert r.accuracy == 0.5 and r.top5_accuracy == 1.0
    assert r.top1_interval == pytest.approx((0.150, 0.850), abs=5e-4)
    assert r.top5_interval == pytest.approx((0.510, 1.000), abs=5e-4)
    assert {c: (r.per_class[c].recall, r.per_class[c].support)
            for c in ("tabby", "espresso", "military_uniform", "tripod")} == {
        "tabby": (0.0, 1), "espresso": (1.0, 1), "military_uniform": (0.0, 1),
        "tripod": (1.0, 1)}  # fmt: skip
    assert r.per_class["tiger_cat"].precision == 0.0 and r.per_class["tiger_cat"].support == 0
    assert ("tabby", "tiger_cat", 1) in r.most_confused and len(r.most_confused) == 2
    assert r.images_per_second > 0 and r.tta is None


def test_validate_writes_metrics_and_pictures(by_wnid):
    out = by_wnid.output
    written = json.loads((out / "metrics.json").read_text())
    assert written["accuracy"] == 0.5 and written["top5_accuracy"] == 1.0
    assert written["confusion"] is None  # 1000 classes: the non-zero cells only
    cells = {(a, b): n for a, b, n in written["confusion_nonzero"]}
    classes = written["classes"]
    assert cells[(classes.index("tabby"), classes.index("tiger_cat"))] == 1
    assert sum(cells.values()) == 4
    for name in ("confusion.png", "top_losses.png", "predictions.png"):
        assert (out / name).stat().st_size > 5000


def test_class_name_folders_map_to_the_same_classes(imagenet_layout, lite0, skimage_data,
                                                    tmp_path, by_wnid):  # fmt: skip
    by_name = _folder(tmp_path / "named", skimage_data, 2)
    mapped = {f.name: lite0.labels[i][1] for f, i in class_folders(by_name, lite0.labels)}
    assert mapped == {"Tabby": "tabby", "espresso": "espresso",
                      "military uniform": "military_uniform", "tripod": "tripod"}  # fmt: skip
    r = validate(lite0, by_name, output=tmp_path / "out", heatmaps=False, top_losses=0, grid=0)
    assert (r.accuracy, r.top5_accuracy, r.confusion) == (0.5, 1.0, by_wnid.confusion)


def test_folders_matching_no_class_are_all_named(imagenet_layout, lite0, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(imagenet_layout, root)
    (root / "kitten").mkdir()
    (root / "n99999999").mkdir()
    with pytest.raises(DatasetError) as info:
        class_folders(root, lite0.labels)
    message = str(info.value)
    assert "2 folder(s)" in message and "'kitten'" in message and "'n99999999'" in message
    assert "\n" not in message and "WordNet id" in message


def test_no_class_folders_names_the_models_own_classes(lite0, tmp_path):
    """A trained run's folder is named by its classes: before, the advice was ImageNet's."""
    own = [("0", "cat"), ("1", "coffee")]
    with pytest.raises(DatasetError, match=r"folder named by its class name \(cat, coffee\)$"):
        class_folders(tmp_path, own)
    with pytest.raises(DatasetError, match=r"WordNet id \(n01440764\) or class name \(tench\)"):
        class_folders(tmp_path, lite0.labels)


def test_a_name_two_classes_share_asks_for_the_wordnet_id(lite0, tmp_path):
    (tmp_path / "crane").mkdir()  # ImageNet has the bird n02012849 and the machine n03126707
    with pytest.raises(DatasetError, match="n02012849 or n03126707"):
        class_folders(tmp_path, lite0.labels)


def test_cli_validate_prints_and_never_replaces_a_default_folder(imagenet_layout, tmp_path,
                                                                monkeypatch, capsys,
                                                                shared_zoo_models):  # fmt: skip
    from kerascope.cli import main

    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "validate-efficientnet_lite0"
    kept.mkdir()
    (kept / "metrics.json").write_text("mine")
    assert main(["validate", "efficientnet_lite0", str(imagenet_layout), "--top-losses", "0"]) == 0
    out, err = capsys.readouterr()
    assert "accuracy 0.5000, top-5 1.0000 on 4 images" in out
    assert "top-1 0.15-0.85, top-5 0.51-1.00" in out and "img/s" in out
    assert "tabby -> tiger_cat: 1" in out
    assert (kept / "metrics.json").read_text() == "mine"
    fresh = tmp_path / "validate-efficientnet_lite0-1"
    assert json.loads((fresh / "metrics.json").read_text())["n"] == 4
    assert f"to {fresh.name}" in err

    bad = tmp_path / "bad"
    (bad / "kitten").mkdir(parents=True)
    assert main(["validate", "efficientnet_lite0", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'kitten'" in err and "error" in err


def test_wilson_interval_by_hand():
    from kerascope.metrics import wilson_interval

    # Brown, Cai & DasGupta (2001): 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))


def _red_pixels(path: Path) -> int:
    """Pixels of the wrong-prediction colour (eval_plots.WRONG, #cf222e) in a picture."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - (0xCF, 0x22, 0x2E)).sum(axis=-1) < 30).sum())


def test_predictions_grid_marks_exactly_the_wrong_ones(by_wnid, lite0, skimage_data, tmp_path):
    from kerascope.eval_plots import prediction_title

    assert prediction_title("espresso", 0.951, "espresso") == ("espresso 95.1%", True)
    title, right = prediction_title("tiger_cat", 0.385, "tabby")  # output.percent's format
    assert not right and title.startswith("\u2717 tiger_cat 38.5%") and "(true: tabby)" in title
    assert prediction_title("wok", 0.0004, "tabby")[0].startswith("\u2717 wok 0.04%")  # not 0%
    # 2 wrong of 4: two red frames (3 px around a 224 px tile: thousands of pixels)
    assert _red_pixels(by_wnid.output / "predictions.png") > 2000
    right_only = tmp_path / "right"
    for name in ("coffee.png", "camera.png"):
        (right_only / PHOTOS[name][0]).mkdir(parents=True)
        shutil.copy(_photo(skimage_data, name), right_only / PHOTOS[name][0] / name)
    r = validate(lite0, right_only, output=tmp_path / "out", heatmaps=False, top_losses=0)
    assert r.accuracy == 1.0 and _red_pixels(r.output / "predictions.png") == 0


@pytest.mark.slow  # 14 s
def test_flip_tta_numbers_stated_in_the_readme(imagenet_layout, lite0, tmp_path):
    from kerascope.tta import TTA

    flip = validate(lite0, imagenet_layout, output=tmp_path / "a", tta=TTA(), heatmaps=False,
                    top_losses=0, grid=0)  # fmt: skip
    assert (flip.accuracy, flip.top5_accuracy) == (0.75, 1.0)  # Grace Hopper becomes right
    assert flip.per_class["military_uniform"].recall == 1.0 and flip.tta["views"] == 2
    ten = validate(lite0, imagenet_layout, output=tmp_path / "b", tta=TTA(crops=5),
                   heatmaps=False, top_losses=0, grid=0)  # fmt: skip
    assert (ten.accuracy, ten.top5_accuracy, ten.tta["views"]) == (0.5, 1.0, 10)


@pytest.mark.slow  # 35 s
def test_validate_a_run_and_its_keras_file_like_evaluate(tmp_path, capsys):
    from kerascope.cli import main
    from kerascope.evaluation import evaluate
    from tests.test_evaluate import _images, untrained_run

    (tmp_path / "run").mkdir()
    run = untrained_run(tmp_path / "run", ["disc", "plain"])
    data = tmp_path / "data"
    _images(data / "Disc", "disc", 5, seed=0)  # class names compared without case
    _images(data / "plain", "plain", 6, seed=1)
    by_run = validate(run, data, output=tmp_path / "v", heatmaps=False)
    by_file = validate(run / "model.keras", data, output=tmp_path / "k", heatmaps=False)
    _images(tmp_path / "same" / "disc", "disc", 5, seed=0)
    _images(tmp_path / "same" / "plain", "plain", 6, seed=1)
    reference = evaluate(run, tmp_path / "same", output=tmp_path / "e", heatmaps=False)
    assert by_run.confusion == by_file.confusion == reference.confusion
    assert by_run.n == 11 and by_run.top5_accuracy is None and by_run.top5_interval is None
    assert (tmp_path / "v" / "predictions.png").is_file()

    target = tmp_path / "labels.csv"
    assert main(["predict", str(run), str(data), "-o", str(target), "--tta"]) == 0
    assert "mean probabilities of 2 views per image (TTA: flip)" in capsys.readouterr().err
    assert len(target.read_text().splitlines()) == 12
    assert main(["evaluate", str(run), str(tmp_path / "same"), "-o", str(tmp_path / "t"),
                 "--tta", "--tta-crops", "5"]) == 0  # fmt: skip
    assert "TTA: mean of 10 views (5 crops + flip)" in capsys.readouterr().out
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["tta"]["views"] == 10


def test_decomposed_unicode_and_case_only_names_of_a_run(tmp_path):
    """Before: a class trained from a macOS folder (decomposed ``café``) did not match the
    composed folder that looks the same, and a run's ``Cat``/``cat`` asked for a WordNet id."""
    import unicodedata

    own = [("0", unicodedata.normalize("NFD", "café")), ("1", "Cat"), ("2", "cat")]
    for name in ("café", "Cat", "cat", "CAT"):
        (tmp_path / name).mkdir()
    with pytest.raises(DatasetError) as info:
        class_folders(tmp_path, own)
    assert str(info.value) == (
        f"'{tmp_path / 'CAT'}' could be the class 'Cat' or 'cat' of this "
        "model; name the folder exactly as the class is named"
    )
    (tmp_path / "CAT").rmdir()
    found = {folder.name: index for folder, index in class_folders(tmp_path, own)}
    assert found == {unicodedata.normalize("NFC", "café"): 0, "Cat": 1, "cat": 2}


def test_a_macos_archive_folder_is_no_class_folder(tmp_path):
    """As in training: ``__MACOSX/`` from a zip made on a Mac was "no class of the model"."""
    own = [("0", "cat"), ("1", "dog")]
    for name in ("cat", "dog", "__MACOSX"):
        (tmp_path / name).mkdir()
    assert [f.name for f, _ in class_folders(tmp_path, own)] == ["cat", "dog"]


def test_unknown_and_ambiguous_folders_are_said_together(lite0, tmp_path):
    """The README checker found `crane/` said alone, `xyz/` only on the next run."""
    for name in ("Tabby", "crane", "xyz"):
        (tmp_path / name).mkdir()
    with pytest.raises(DatasetError) as info:
        class_folders(tmp_path, lite0.labels)
    message = str(info.value)
    assert "1 folder(s)" in message and "'xyz'" in message and "n02012849 or n03126707" in message
    assert "\n" not in message
