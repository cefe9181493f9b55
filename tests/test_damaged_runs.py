"""Run folders with a damaged or missing part, and inputs with nothing in them.

`train --resume` over a damaged or missing backup (`kerascope.training.checkpoints`). Before:
a truncated weights file or a bad seeds file was a traceback (and every later resume the same
one), a damaged ``training_metadata.json`` silently trained the stage again from epoch 1, and
so did a deleted ``backup/`` folder, without a word. A run without its ``labels.json``
predicted ``class_0`` / ``class_1``; ``predict`` of an empty folder said "wrote 0 rows".
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from kerascope.cli import main
from kerascope.report import read_history
from kerascope.training import train

from .test_train import StopAfter, make_shapes


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A LeNet run stopped after its second of four epochs (its backup: epoch 2)."""
    root = tmp_path_factory.mktemp("interrupted")
    data = make_shapes(root / "data", n=8, size=32)
    run = root / "run"
    with pytest.raises(KeyboardInterrupt):
        train(data, recipe="lenet", output=run, epochs=4, image_size=32, progress=False,
              callbacks=[StopAfter(1)])  # fmt: skip
    return run


def _damage(name: str, run: Path) -> Path:
    backup = run / "backup" / "stage1"
    path = {"weights": backup / "epoch2.weights.h5", "seeds": backup / "epoch2.seeds.npz",
            "metadata": backup / "training_metadata.json"}[name]  # fmt: skip
    if name == "weights":
        path.write_bytes(path.read_bytes()[:5000])  # truncated, as by a full disk
    else:
        path.write_text("junk" if name == "seeds" else '{"epo')
    return path


@pytest.mark.parametrize(
    ("damaged", "reason"),
    [("weights", "truncated file"), ("seeds", "not a complete .npz file"),
     ("metadata", "not the JSON of a finished epoch")],
)  # fmt: skip
def test_a_damaged_backup_is_one_line_saying_how_to_go_on(interrupted, tmp_path, capsys,
                                                         damaged, reason):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    path = _damage(damaged, run)
    for _ in range(2):  # the same line again, not a traceback the second time
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"kerascope: error: the run's backup '{path}' is damaged (")
        assert reason in line and "Traceback" not in err
        assert line.endswith(f"remove the folder '{path.parent}' to train stage 1 again from "
                             f"its first epoch, then continue with `kerascope train --resume "
                             f"{run}`")  # fmt: skip
    shutil.rmtree(path.parent)  # as the line says
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"note: '{path.parent}' is missing, so stage 1's epochs 1-2 are trained again" in err
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2, 3, 4]
    assert json.loads((run / "run_state.json").read_text())["status"] == "done"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-epoch LeNet run and its data."""
    root = tmp_path_factory.mktemp("finished")
    data = make_shapes(root / "data", n=8, size=32)
    train(data, recipe="lenet", output=root / "run", epochs=1, image_size=32, progress=False)
    return root / "run", data


def test_a_run_without_labels_json_predicts_its_recorded_class_names(finished, tmp_path):
    run, data = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "labels.json").unlink()
    out = tmp_path / "out.csv"
    assert main(["predict", str(copy), str(data / "circle"), "-o", str(out)]) == 0
    labels = {row["label"] for row in csv.DictReader(out.open(newline=""))}
    assert labels and labels <= {"circle", "square", "triangle"}, labels  # config.yaml's


def test_predict_of_a_folder_without_images_is_one_line(finished, tmp_path, capsys):
    run, _ = finished
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), str(empty), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"kerascope: error: no images found in {empty}\n"
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_run_path_that_does_not_exist_is_not_called_an_unknown_model(command, tmp_path,
                                                                       capsys):  # fmt: skip
    missing = tmp_path / "runs" / "gone"
    make_shapes(tmp_path / "data", n=2, size=32)
    assert main([command, str(missing), str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err == (f"kerascope: error: no run folder or model file at "
                                       f"'{missing}' (zoo models are named without a path: "
                                       "`kerascope models` lists them)\n")  # fmt: skip


def test_an_unfinished_run_says_how_to_finish_it_and_a_file_is_no_dataset(
    interrupted, finished, tmp_path, capsys
):
    """Before: "no model file at RUN/model.keras" with no word of --resume; evaluate of one
    image said its folder "does not exist"."""
    run, data = finished
    image = next((data / "circle").iterdir())
    for command in (["predict", str(interrupted), str(image)],
                    ["classify", str(image), "-m", str(interrupted)]):  # fmt: skip
        assert main(command) == 2
        line = capsys.readouterr().err
        assert f"has not finished; continue it with `kerascope train --resume {interrupted}`" \
            in line, line  # fmt: skip
    gone = tmp_path / "gone"  # finished, then its model deleted: no resume to offer
    shutil.copytree(run, gone)
    (gone / "model.keras").unlink()
    assert main(["predict", str(gone), str(image)]) == 2
    assert "finished, but its model was removed since" in capsys.readouterr().err
    for target in (image, data / "*" / "*.png"):
        assert main(["evaluate", str(run), str(target)]) == 2
        line = capsys.readouterr().err
        assert "reads a folder of class folders" in line and "kerascope predict" in line, line


def test_a_run_still_training_says_so_instead_of_resume(tmp_path):
    """Before: evaluate of a run in training said "continue it with train --resume", which
    the run's lock then refused."""
    from kerascope.locks import acquire
    from kerascope.rundir import LOCK_NAME, missing_model, write_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: lenet\n")
    write_state(run, {"status": "running", "completed_stages": 0})
    assert "continue it with `kerascope train --resume" in missing_model(run / "model.keras")
    with acquire(run / LOCK_NAME):
        said = missing_model(run / "model.keras")
    assert "is still training" in said and "--resume" not in said
    assert "continue it with" in missing_model(run / "model.keras")  # released: resumable
