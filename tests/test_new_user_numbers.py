"""Misleading numbers (issue 24, item 4, the small ones): no "WordNet id" column of class indices
for trained models, no class-weight advice to a run that has class weights, one figure for
--aug-smooth's cost in --help and README, and --threshold's help says rank 1 is always kept."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import kerascope
from kerascope import output
from kerascope.cli import main
from kerascope.data.folders import IMBALANCE_HINT, IMBALANCE_WEIGHTED
from tests.test_evaluate import untrained_run
from tests.test_train import make_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("run"), ["cat", "dog", "fox"])


def _header(table: str) -> str:
    return next(line for line in table.splitlines() if "probability" in line)


def test_trained_models_have_no_wordnet_id_column(run_dir, photo_paths):
    results = kerascope.classify(photo_paths["chelsea"], model=run_dir, top=3)
    table = output.render(results, "table")
    assert "WordNet id" not in table
    assert [c.split()[0] for c in _header(table).split("┃")[1:-1]] == [
        "image", "#", "class", "probability"
    ]  # fmt: skip
    for line in table.splitlines():
        if "chelsea" in line:
            assert re.search(r"┃?\s*1\s*[│┃]\s*(cat|dog|fox)\s*[│┃]\s*\d+\.\d%", line), line


def test_imagenet_models_keep_the_wordnet_id_column(lite0, photo_paths):
    table = output.render(kerascope.classify(photo_paths["chelsea"], model=lite0, top=2), "table")
    assert "WordNet id" in _header(table)
    assert re.search(r"n0\d{7}", table)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    data = make_shapes(tmp_path_factory.mktemp("imbalanced") / "data", n=8, size=32)
    for i in range(30):  # circle gets several times the images of the others
        shutil.copy(data / "circle" / "000.png", data / "circle" / f"extra{i}.png")
    return data


@pytest.mark.parametrize("weighted", [False, True])
def test_imbalance_advice_only_where_not_taken(imbalanced, tmp_path, capsys, weighted):
    argv = ["train", str(imbalanced), "--recipe", "lenet", "--epochs", "1", "--image-size", "32",
            "-o", str(tmp_path / "run")]  # fmt: skip
    assert main(argv + (["--class-weight", "auto"] if weighted else [])) == 0
    warning = next(line for line in capsys.readouterr().err.splitlines() if "imbalanced" in line)
    if weighted:
        assert IMBALANCE_WEIGHTED in warning and "consider" not in warning
    else:
        assert f"({IMBALANCE_HINT})" in warning and "--class-weight auto" in warning


def test_threshold_help_says_rank_one_is_always_kept(run_dir, photo_paths, capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the top class (rank 1) is always shown" in text
    # ... as it is: an untrained 3-class model is far below 0.99, and still answers
    (result,) = kerascope.classify(photo_paths["chelsea"], model=run_dir, top=3, threshold=0.99)
    assert [p.rank for p in result.predictions] == [1]
    assert result.predictions[0].probability < 0.99


def test_aug_smooth_cost_is_the_same_in_help_and_readme(capsys):
    from kerascope.cam.smoothing import FACTORS, FLIPS

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    said = re.search(r"--aug-smooth average the maps of (\d+) copies .*?: ([\d-]+x) the time", text)
    assert said and int(said[1]) == len(FLIPS) * len(FACTORS)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    in_readme = re.search(r"`--aug-smooth` averages (\d+) flipped .*? \(([\d-]+x) the time", readme)
    assert in_readme and (in_readme[1], in_readme[2]) == (said[1], said[2])


def test_the_table_wraps_a_long_file_name_instead_of_cutting_it():
    """Before: "long/holiday_photos_…/day_three/IMG_2024…" for two files of one folder."""
    from kerascope.classification import ImageResult, Prediction

    folder = "long/holiday_photos_2024_summer_trip_to_the_mountains/day_three/"
    names = [folder + f"IMG_20240712_101500_{kind}.jpg" for kind in ("cat", "coffee")]
    rows = [ImageResult(n, [Prediction(1, 285, "n02124075", "Egyptian_cat", 0.5)]) for n in names]
    table = output.render(rows, "table")
    cells = "".join(line.split("│")[1].strip() for line in table.splitlines() if "│" in line)
    assert "…" not in table and all(name in cells for name in names)
