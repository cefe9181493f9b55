"""A resumed run keeps the split it started with (``split.json``): files added or removed
since never move an image between train and validation; a moved dataset resumes from its new
place; every stop says how the run goes on (`kerascope.training.run`, ``run_data``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kerascope.cli import main
from kerascope.errors import RunError
from kerascope.testing.photos import cat_and_coffee
from kerascope.training import train

from .test_run_integrity import _one_line_error
from .test_train import StopAfter


def _split(run: Path) -> dict[str, set[str]]:
    return {k: set(v) for k, v in json.loads((run / "split.json").read_text())["splits"].items()}


def _interrupted_run(data: Path, run: Path) -> dict[str, set[str]]:
    with pytest.raises(KeyboardInterrupt):
        train(data, recipe="lenet", output=run, epochs=3, image_size=32, batch_size=8,
              progress=False, callbacks=[StopAfter(0)])  # fmt: skip
    return _split(run)


def test_resume_keeps_the_recorded_split_when_files_change(tmp_path, capsys):
    data = cat_and_coffee(tmp_path / "data", n=10, size=32)
    run = tmp_path / "run"
    before = _interrupted_run(data, run)
    held = sorted(before["validation"])
    gone, trained = held[0], sorted(before["train"])[0]
    kept = tmp_path / "away.jpg"
    shutil.move(data / gone, kept)  # before: one file less reshuffled its whole class
    (data / trained).unlink()
    shutil.copy(data / sorted(before["train"])[1], data / "cat" / "zz_new.jpg")
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        train(resume=run, epochs=3, progress=True, callbacks=[StopAfter(1)])
    assert _split(run) == before  # none trained on, none added, the files away still listed
    err = capsys.readouterr().err
    assert "2 file(s) of the run's split are gone from the dataset and left out" in err
    assert "1 file(s) added to the dataset since the run started are not used" in err
    assert "'cat/zz_new.jpg'" in err
    shutil.move(kept, data / gone)  # back: held out again (before: taken for a new file)
    result = train(resume=run, epochs=3, progress=True)
    assert _split(run) == before
    assert sum(sum(c.values()) for c in result.config["counts"].values()) == 19
    err = capsys.readouterr().err
    assert "1 file(s) of the run's split are gone" in err
    assert "1 file(s) added to the dataset since the run started are not used" in err


def test_a_moved_dataset_resumes_from_its_new_place(tmp_path, capsys):
    data = cat_and_coffee(tmp_path / "data", n=6, size=32)
    run = tmp_path / "run"
    before = _interrupted_run(data, run)
    moved = data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err)  # before: "... does not exist", no hint
    assert f"'{data}', does not exist any more" in line
    assert f"kerascope train NEW_FOLDER --resume {run}" in line
    cat_and_coffee(tmp_path / "other", n=3, size=32, seed=5)  # not the run's files
    with pytest.raises(RunError, match="holds 6 of its 12 files"):
        train(tmp_path / "other", resume=run, progress=False)
    result = train(moved, resume=run, progress=False)  # before: "cannot resume ... with DATA"
    assert result.config["data"] == str(moved.resolve())
    record = json.loads((run / "split.json").read_text())
    assert record["data"] == str(moved.resolve())
    assert {k: set(v) for k, v in record["splits"].items()} == before


def test_every_stop_says_how_the_run_goes_on(tmp_path, capsys, monkeypatch):
    import kerascope.data
    import kerascope.training.finish as finish

    data = cat_and_coffee(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    _interrupted_run(data, run)
    capsys.readouterr()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # in the scan: before, "kerascope: interrupted" alone
        patch.setattr(kerascope.data, "scan_dataset", stop)
        with pytest.raises(KeyboardInterrupt):
            train(resume=run, progress=True)
    assert f"interrupted: epoch 1 is saved; continue with `kerascope train --resume {run}`" in (
        capsys.readouterr().err
    )
    with monkeypatch.context() as patch:  # in the finishing steps, after the last epoch
        patch.setattr(finish, "write_run_report", stop)
        with pytest.raises(KeyboardInterrupt):
            train(resume=run, progress=True)
    err = capsys.readouterr().err
    assert f"every stage is trained and saved; `kerascope train --resume {run}` writes" in err
    result = train(resume=run, progress=False)
    assert (run / "report.md").is_file() and [r["epoch"] for r in result.history] == [1, 2, 3]
    fresh = tmp_path / "fresh"
    with monkeypatch.context() as patch:  # a new run stopped before it saved anything
        patch.setattr(kerascope.data, "scan_dataset", stop)
        with pytest.raises(KeyboardInterrupt):
            train(data, recipe="lenet", output=fresh, image_size=32, progress=True)
    assert "nothing of the run is saved yet; run the same command again" in capsys.readouterr().err
    assert not fresh.exists()


def test_an_output_inside_the_dataset_is_refused_up_front(tmp_path, capsys):
    data = cat_and_coffee(tmp_path / "data", n=3, size=32)
    assert main(["train", str(data), "--recipe", "lenet", "-o", str(data / "run")]) == 2
    line = _one_line_error(capsys.readouterr().err)  # before: "class folder ... has no images"
    assert f"output '{data / 'run'}' is inside the dataset folder '{data}'" in line
    assert sorted(p.name for p in data.iterdir()) == ["cat", "coffee"]


def test_a_record_whose_class_lost_its_held_out_images_says_why(tmp_path):
    """An earlier kerascope's resume could move a small class's only held-out image into
    training; the review found the refusal then telling to "restore" what nothing lists."""
    from kerascope.data import DatasetError

    data = cat_and_coffee(tmp_path / "data", n=6, size=32)
    run = tmp_path / "run"
    before = _interrupted_run(data, run)
    record = json.loads((run / "split.json").read_text())
    moved = [f for f in record["splits"]["validation"] if f.startswith("coffee/")]
    record["splits"]["validation"] = [f for f in record["splits"]["validation"] if f not in moved]
    record["splits"]["train"] += moved
    (run / "split.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match="no validation image of class 'coffee'") as info:
        train(resume=run, progress=False)
    assert "moved into training by a resume of an earlier kerascope" in str(info.value)
    assert before  # the run itself is kept as it was
    assert json.loads((run / "split.json").read_text()) == record


def test_a_finished_run_whose_dataset_is_gone_is_refused_as_finished(tmp_path):
    data = cat_and_coffee(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    train(data, recipe="lenet", output=run, epochs=1, image_size=32, progress=False)
    shutil.rmtree(data)
    with pytest.raises(RunError, match="already finished"):  # not "give its new location"
        train(resume=run, progress=False)


def test_a_dataset_whose_names_changed_unicode_form_resumes(tmp_path):
    """macOS spells café decomposed, Linux composed: the review found every file of that class
    taken as gone and new, and the resume refused."""
    import unicodedata

    data = cat_and_coffee(tmp_path / "data", n=6, size=32)
    composed = unicodedata.normalize("NFC", "café")
    (data / "cat").rename(data / composed)
    run = tmp_path / "run"
    before = _interrupted_run(data, run)
    (data / composed).rename(data / unicodedata.normalize("NFD", "café"))
    result = train(resume=run, progress=False)
    assert sum(sum(c.values()) for c in result.config["counts"].values()) == 12
    after = {k: {unicodedata.normalize("NFC", f) for f in v} for k, v in _split(run).items()}
    assert after == before
