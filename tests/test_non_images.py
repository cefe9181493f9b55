"""Files in a folder that are not images by their suffix (a README, a labels CSV) are said the
same way by classify, predict and evaluate: one line, ``skipped N non-image file(s): a, b``,
and no result row; a file with an image suffix that does not decode is an error row (classify,
predict) or an unreadable line (evaluate). Before: predict gave each its error row (and exit
1), evaluate left them, and pictures in no class folder, out in silence. Also: ``evaluate
--split auto`` lists the test folder once."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from kerascope.evaluation import evaluate
from kerascope.prediction import predict

NOTE = "skipped 2 non-image file(s): "


@pytest.fixture
def mixed(tmp_path, photo_paths) -> Path:
    """Class folders of real photos with a README beside them, a labels CSV in one, a
    truncated JPEG in the other, and a picture in no class folder."""
    root = tmp_path / "mixed"
    for cls, names in (("cat", ("chelsea", "astronaut")), ("coffee", ("coffee", "rocket"))):
        (root / cls).mkdir(parents=True)
        for name in names:
            shutil.copy(photo_paths[name], root / cls)
    (root / "README.txt").write_text("photos for the cat/coffee run")
    (root / "cat" / "labels.csv").write_text("path,label\n")
    rocket = (root / "coffee" / "rocket.jpg").read_bytes()
    (root / "coffee" / "broken.jpg").write_bytes(rocket[: len(rocket) // 3])
    shutil.copy(photo_paths["chelsea"], root / "loose.png")
    return root


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_predict_names_non_images_in_one_line_and_gives_them_no_row(mixed, lenet, caplog):
    caplog.set_level("WARNING", logger="kerascope")
    rows = predict(lenet, mixed)
    names = [Path(r.source).name for r in rows]
    assert names == ["loose.png", "astronaut.png", "chelsea.png", "broken.jpg", "coffee.png",
                     "rocket.jpg"]  # fmt: skip
    assert [Path(r.source).name for r in rows if not r.ok] == ["broken.jpg"]
    assert _notes(caplog) == [NOTE + f"{mixed / 'README.txt'}, {mixed / 'cat' / 'labels.csv'}"]


def test_predict_command_exits_0_when_only_non_images_were_skipped(mixed, lenet, capsys):
    (mixed / "coffee" / "broken.jpg").unlink()
    out = mixed.parent / "p.csv"
    from kerascope.cli import main

    assert main(["predict", str(lenet), str(mixed), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"kerascope: {NOTE}{mixed / 'README.txt'}, " in err
    assert "wrote 5 rows" in err and "could not be read" not in err
    assert len(list(csv.DictReader(out.open()))) == 5


def test_classify_says_the_same_line(mixed, capsys, shared_zoo_models):
    from kerascope.cli import main

    assert main(["classify", str(mixed), "-k", "1", "--format", "csv"]) == 1  # broken.jpg
    assert f"kerascope: {NOTE}{mixed / 'README.txt'}, " in capsys.readouterr().err


def test_evaluate_says_non_images_and_pictures_in_no_class_folder(mixed, lenet, caplog):
    caplog.set_level("WARNING", logger="kerascope")
    result = evaluate(lenet, mixed, output=mixed.parent / "ev", top_losses=0, heatmaps=False)
    assert result.n == 4 and [Path(p).name for p, _ in result.unreadable] == ["broken.jpg"]
    assert _notes(caplog) == [
        NOTE + f"{mixed / 'README.txt'}, {mixed / 'cat' / 'labels.csv'}",
        f"1 image(s) directly in '{mixed}' are ignored (no class folder)",
    ]


def test_evaluate_of_a_split_folder_says_what_lies_beside_the_splits(mixed, lenet, caplog):
    """Split layout: the test folder's own leftovers, and pictures beside the split folders;
    a README at the top is no data and not said (as train's scan)."""
    test = mixed.parent / "split" / "test"
    shutil.copytree(mixed, test)
    (test / "README.txt").rename(test.parent / "README.txt")
    (test / "loose.png").rename(test.parent / "top.png")
    caplog.set_level("WARNING", logger="kerascope")
    result = evaluate(lenet, test.parent, output=mixed.parent / "ev", top_losses=0,
                      heatmaps=False)  # fmt: skip
    assert (result.split, result.n) == ("test", 4)
    assert _notes(caplog) == [
        f"1 image(s) directly in '{test.parent}' are ignored (no class folder)",
        f"skipped 1 non-image file(s): {test / 'cat' / 'labels.csv'}",
    ]


def test_evaluate_says_an_unlabelled_test_folder_is_not_scored(tmp_path, mixed, lenet, caplog):
    root = tmp_path / "kaggle"
    shutil.copytree(mixed / "cat", root / "train" / "cat")
    shutil.copytree(mixed / "coffee", root / "train" / "coffee")
    (root / "train" / "coffee" / "broken.jpg").unlink()
    (root / "test").mkdir()
    shutil.copy(mixed / "loose.png", root / "test" / "1.png")
    caplog.set_level("WARNING", logger="kerascope")
    result = evaluate(lenet, root, output=tmp_path / "ev", top_losses=0, heatmaps=False)
    assert (result.split, result.n) == ("all", 4)
    assert f"'{root / 'test'}' holds no images in class folders, so it is not scored" in (
        " ".join(_notes(caplog))
    )


def _count_listings(monkeypatch, folder: Path) -> dict[str, int]:
    """How many times each folder under ``folder`` is listed (os.walk lists through
    os.scandir)."""
    counts: dict[str, int] = {}
    real = os.scandir

    def scandir(path="."):
        key = os.fspath(path)
        if key.startswith(str(folder)):
            counts[key] = counts.get(key, 0) + 1
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return counts


@pytest.mark.parametrize("split", ["auto", "test", "all"])
def test_the_test_folder_is_listed_once(tmp_path, mixed, lenet, monkeypatch, split):
    """Before: ``--split auto`` walked test/'s class folders to see whether they hold images,
    then again to score them (``--split test``: a third time, to find the default split)."""
    root = tmp_path / "data"
    for s in ("train", "test"):
        for cls in ("cat", "coffee"):
            shutil.copytree(mixed / cls, root / s / cls)
    counts = _count_listings(monkeypatch, root / "test")
    result = evaluate(lenet, root, split=split, output=tmp_path / split, top_losses=0,
                      heatmaps=False)  # fmt: skip
    assert result.n == (4 if split != "all" else 8)
    assert counts == {str(root / "test" / "cat"): 1, str(root / "test" / "coffee"): 1}
