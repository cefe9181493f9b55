"""Run directories that survive kills, full disks and a second writer; honest numbers from
train and evaluate; predict and evaluate that never lose or hide a file.

Crashes are real ``SIGKILL``s of a subprocess: a small driver script wraps one finishing step
of ``kerascope.training.finish`` so the process kills itself right there (no hook in the code).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.cli import main
from kerascope.errors import RunError
from kerascope.report import read_history
from kerascope.training import train

from .fulldisk import small_disk
from .test_train import make_shapes

ROOT = Path(__file__).resolve().parents[1]

# Wraps one step of the finishing sequence (or the model file's fsync) with a SIGKILL.
KILL_DRIVER = """
import os, signal, sys
step, when = sys.argv[1], sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if step == "model-write":
    import kerascope.files as files
    sync = files.fsync_path
    def fsync_path(path):
        sync(path)
        if str(path).endswith(".keras"):
            die()  # the temp file is complete, the rename has not happened
    files.fsync_path = fsync_path
else:
    import kerascope.training.finish as finish
    original = getattr(finish, step)
    def wrapped(*args, **kwargs):
        if when == "before":
            die()
        out = original(*args, **kwargs)
        die()
    setattr(finish, step, wrapped)
from kerascope.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _kill_at(step: str, when: str, *args: str) -> subprocess.Popen:
    """Starts the driver (several at once: each waits mostly on its imports)."""
    return subprocess.Popen([sys.executable, "-c", KILL_DRIVER, step, when, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip


def _killed_at(step: str, when: str, *args: str) -> subprocess.CompletedProcess:
    proc = _kill_at(step, when, *args)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def _state(run: Path) -> dict:
    return json.loads((run / "run_state.json").read_text())


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("kerascope: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes32") / "data", n=10, size=32)


@pytest.fixture(scope="module")
def lenet_run(shapes32, tmp_path_factory) -> Path:
    """A finished LeNet run on a classes-layout folder (so the run makes its own split)."""
    run = tmp_path_factory.mktemp("lenet") / "run"
    train(shapes32, recipe="lenet", output=run, epochs=3, image_size=32, progress=False)
    return run


@pytest.mark.slow
def test_a_kill_at_each_finishing_step_never_loses_the_trained_model(shapes32, tmp_path):
    base = tmp_path / "base"
    args = ["train", str(shapes32), "--recipe", "lenet", "--epochs", "2", "--image-size", "32",
            "-o", str(base)]  # fmt: skip
    done = _killed_at("_save_final_model", "before", *args)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _state(base)["completed_stages"] == 1 and not (base / "model.keras").exists()
    assert (base / "best.weights.h5").is_file()

    steps = (("model-write", "-"), ("_save_final_model", "after"),
             ("_write_report_files", "after"), ("_mark_done", "after"))  # fmt: skip
    kills = {}
    try:
        for step, when in steps:  # the four kills run at once, beside the reference below
            shutil.copytree(base, tmp_path / step)
            kills[step] = _kill_at(step, when, "train", "--resume", str(tmp_path / step))
        reference = tmp_path / "reference"
        shutil.copytree(base, reference)
        result = train(resume=reference, progress=False)
        expected = _weights(reference / "model.keras")
        assert result.best_epoch in (1, 2) and _state(reference)["status"] == "done"
        ends = {step: proc.communicate(timeout=600)[1] for step, proc in kills.items()}
    finally:
        for proc in kills.values():
            proc.kill()  # only on a failure here: each has killed itself already
            proc.wait()

    for step, _ in steps:
        run = tmp_path / step
        assert kills[step].returncode == -signal.SIGKILL, (step, ends[step])
        if step == "_mark_done":
            assert _state(run)["status"] == "done" and (run / "best.weights.h5").is_file()
            with pytest.raises(RunError, match="already finished"):
                train(resume=run, progress=False)  # and the leftovers are cleaned up
        else:
            assert _state(run).get("status") != "done"
            again = train(resume=run, progress=False)
            assert again.best_epoch == result.best_epoch
        for got, want in zip(_weights(run / "model.keras"), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert _state(run)["status"] == "done" and (run / "report.md").is_file()
        assert not (run / "best.weights.h5").exists() and not (run / "backup").exists()
        assert not list(run.glob(".*partial*")), step


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_trains(shapes32, tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "kerascope", "train", str(shapes32), "--recipe", "scratch",
         "--image-size", "32", "--epochs", "400", "--patience", "1000", "-o", str(run)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    meta = run / "backup" / "stage1" / "training_metadata.json"
    try:
        deadline = time.monotonic() + 300
        while not meta.is_file():  # an epoch trained and backed up: the resume below needs one
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        # this process is the second writer (a third process would only add its imports)
        assert main(["train", str(shapes32), "--recipe", "scratch", "-o", str(run)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "in use by another kerascope process" in line and f"pid {first.pid}" in line
        assert main(["train", "--resume", str(run)]) == 2
        assert "in use" in capsys.readouterr().err
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    ran = json.loads(meta.read_text())["epoch"]
    assert main(["train", "--resume", str(run), "--epochs", str(ran + 1)]) == 0
    assert [r["epoch"] for r in read_history(run / "history.csv")] == list(range(1, ran + 2))


@pytest.mark.slow
def test_train_on_a_full_disk_stops_in_one_line_and_resumes_once_there_is_space(shapes32):
    with small_disk(8 * 1024 * 1024) as disk:
        if not disk.tmpfs:
            disk.size = 64 * 1024  # a file-size cap: the first weights backup hits it
        run = disk.folder / "run"
        env = {**os.environ, "KERASCOPE_HOME": str(disk.folder / "home")}  # caches there too
        proc = subprocess.Popen(
            [sys.executable, "-m", "kerascope", "train", str(shapes32), "--recipe", "scratch",
             "--image-size", "32", "--epochs", "400", "--patience", "1000", "-o", str(run)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=disk.preexec,
        )  # fmt: skip
        if disk.tmpfs:
            deadline = time.monotonic() + 300
            while not read_history(run / "history.csv") and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            disk.fill()
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err
        line = _one_line_error(err)
        assert "no space left" in line or "could not write" in line, line
        assert f"--resume {run}" in line
        disk.free()
        # the disk may fill between the backup folder and its metadata: no epoch backed up then
        meta = run / "backup" / "stage1" / "training_metadata.json"
        ran = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        assert main(["train", "--resume", str(run), "--epochs", str(ran + 1)]) == 0
        history = read_history(run / "history.csv")
        assert [r["epoch"] for r in history] == list(range(1, ran + 2))
        assert (run / "model.keras").is_file() and _state(run)["status"] == "done"


def test_headline_report_and_evaluate_describe_the_saved_model(lenet_run, shapes32, capsys):
    from kerascope.cli_train import headline
    from kerascope.evaluation import evaluate
    from kerascope.training.run import RunResult

    fake = RunResult(run_dir=Path("r"), model_path=Path("r/model.keras"), classes=["a"],
                     history=[], best_epoch=34, val_accuracy=0.975, best_val_accuracy=1.0,
                     final_val_accuracy=0.975, seconds=1.0, config={}, val_loss=0.08)  # fmt: skip
    assert "epoch 34" in headline(fake) and "0.975" in headline(fake)
    assert "1.000" not in headline(fake)  # the best over epochs is another epoch's number

    outcome = _state(lenet_run)["outcome"]
    row = next(r for r in read_history(lenet_run / "history.csv")
               if r["epoch"] == outcome["best_epoch"])  # fmt: skip
    assert outcome["val_loss"] == pytest.approx(row["val_loss"])
    assert outcome["val_accuracy"] == pytest.approx(row["val_accuracy"])
    report = (lenet_run / "report.md").read_text()
    assert f"epoch {outcome['best_epoch']} (lowest validation loss)" in report
    scored = evaluate(lenet_run, shapes32, output=lenet_run / "eval", top_losses=0)
    assert scored.split == "validation" and scored.split_source == "run"
    assert scored.accuracy == pytest.approx(outcome["val_accuracy"], abs=1e-6)


@pytest.mark.slow  # 19 s
def test_a_copy_of_a_runs_model_keras_alone_keeps_its_class_names(lenet_run, tmp_path):
    """Before: copied out of its run folder, model.keras named its classes class_0, class_1."""
    import shutil

    from kerascope.rundir import read_labels
    from kerascope.zoo.models import load_model

    copy = Path(shutil.copy(lenet_run / "model.keras", tmp_path / "copied.keras"))
    assert [name for _, name in load_model(copy).labels] == read_labels(lenet_run)


def test_evaluate_scores_the_held_out_split_and_warns_about_training_images(
    lenet_run, shapes32, tmp_path, capsys
):
    from kerascope.evaluation import evaluate

    record = json.loads((lenet_run / "split.json").read_text())
    assert record["data"] == str(shapes32.resolve())
    n_train, n_val = len(record["splits"]["train"]), len(record["splits"]["validation"])
    assert (n_train, n_val) == (24, 6)
    held = evaluate(lenet_run, shapes32, output=tmp_path / "a", top_losses=0)
    assert (held.n, held.trained_on, held.split) == (n_val, 0, "validation")
    every = evaluate(lenet_run, shapes32, output=tmp_path / "b", top_losses=0, split="all")
    assert (every.n, every.trained_on) == (n_train + n_val, n_train)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["trained_on"] == n_train

    assert main(["evaluate", str(lenet_run), str(shapes32), "-o", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert f"on {n_val} images: the images the run held out" in err and "WARNING" not in err
    assert main(["evaluate", str(lenet_run), str(shapes32), "--split", "all",
                 "-o", str(tmp_path / "d")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"WARNING: {n_train} of the {n_train + n_val} scored images were used to train" in err

    # without -o: the data the run trained from is the run's own evaluation (its folder);
    # another folder's results go to their own sub-folder, never over the run's files
    assert evaluate(lenet_run, shapes32, top_losses=0).output == lenet_run
    own = (lenet_run / "metrics.json").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(shapes32, other)
    try:
        theirs = evaluate(lenet_run, other, top_losses=0, split="all")
        assert theirs.trained_on == n_train  # copies of them: before, 0 and no warning
        assert theirs.output == lenet_run / "evaluations" / "other"
        assert (theirs.output / "metrics.json").is_file()
        assert (lenet_run / "metrics.json").read_bytes() == own
        # its own data's trained-on images: beside the held-out score, never over it (before:
        # --split train replaced metrics.json with the optimistic score)
        for split in ("train", "all"):
            scored = evaluate(lenet_run, shapes32, top_losses=0, split=split)
            assert scored.output == lenet_run / "evaluations" / f"{shapes32.name}-{split}"
            assert (lenet_run / "metrics.json").read_bytes() == own
    finally:
        shutil.rmtree(lenet_run / "evaluations", ignore_errors=True)


def test_scan_findings_are_printed_before_the_first_epoch(shapes32, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes32, data)
    for i in range(30):  # imbalance: circle gets four times the images
        shutil.copy(data / "circle" / "000.png", data / "circle" / f"extra{i}.png")
    (data / "square" / "broken.png").write_bytes(b"\x89PNG truncated")
    os.symlink("loop.png", data / "square" / "loop.png")  # a symbolic link loop
    (data / "triangle" / "notes.txt").write_text("not an image")
    seen: list[str] = []

    class Peek(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(capsys.readouterr().err)

    run = tmp_path / "run"
    train(data, recipe="lenet", output=run, epochs=1, image_size=32, skip_bad=True,
          callbacks=[Peek()])  # fmt: skip
    before = seen[0]
    assert f"--skip-bad left out 2 unreadable file(s); the list is in {run / 'skipped.txt'}" \
        in before  # fmt: skip
    assert "classes are imbalanced" in before and "non-image file(s) ignored" in before
    listed = dict(line.split("\t") for line in (run / "skipped.txt").read_text().splitlines())
    assert set(map(os.path.basename, listed)) == {"broken.png", "loop.png", "notes.txt"}
    loop = next(reason for path, reason in listed.items() if path.endswith("loop.png"))
    assert "symbolic link" in loop.lower()
    assert "skipped.txt" in (run / "report.md").read_text()


def test_predict_lists_skipped_files_and_never_replaces_an_unnamed_csv(
    lenet_run, shapes32, tmp_path, monkeypatch, capsys
):
    pics = tmp_path / "pics"
    shutil.copytree(shapes32 / "circle", pics)
    (pics / "scan.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n")
    (pics / "notes.txt").write_text("hello")
    os.symlink("loop.png", pics / "loop.png")
    monkeypatch.chdir(tmp_path)
    Path("predictions.csv").write_text("precious\n")
    assert main(["predict", str(lenet_run), str(pics)]) == 1
    err = capsys.readouterr().err
    assert "predictions-1.csv" in err and Path("predictions.csv").read_text() == "precious\n"
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open("predictions-1.csv"))}
    assert len(rows) == 10 + 1  # non-image files are named in one note, not given rows
    assert "scan.jp2" not in rows and "notes.txt" not in rows
    assert "skipped 2 non-image file(s): " in err and "scan.jp2" in err and "notes.txt" in err
    assert rows["loop.png"]["error"]
    assert rows["000.png"]["label"] and not rows["000.png"]["error"]
    assert main(["predict", str(lenet_run), str(pics)]) == 1
    assert Path("predictions-2.csv").is_file() and "predictions-2.csv" in capsys.readouterr().err


def test_outputs_are_atomic_on_a_full_disk(lenet_run, shapes32, tmp_path, monkeypatch, capsys):
    import kerascope.files as files

    out = tmp_path / "out.csv"
    out.write_text("previous\n")
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text("{}\n")

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "fsync_path", full)
    assert main(["predict", str(lenet_run), str(shapes32 / "circle"), "-o", str(out)]) == 2
    assert "no space left" in _one_line_error(capsys.readouterr().err)
    assert out.read_text() == "previous\n"
    assert main(["evaluate", str(lenet_run), str(shapes32), "-o", str(metrics.parent)]) == 2
    assert "no space left" in _one_line_error(capsys.readouterr().err)
    assert metrics.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["metrics.json",
                                                                         "out.csv"]  # fmt: skip


def test_damaged_run_files_and_taken_outputs_are_one_line_errors(
    lenet_run, shapes32, tmp_path, capsys
):
    broken = tmp_path / "broken"
    shutil.copytree(lenet_run, broken)
    (broken / "labels.json").write_text("{not json")
    for args in (["evaluate", str(broken), str(shapes32)], ["predict", str(broken), str(shapes32)]):
        assert main(args) == 2
        assert "labels.json" in _one_line_error(capsys.readouterr().err)
    (broken / "labels.json").write_text('{"classes": [1, 2]}')
    assert main(["predict", str(broken), str(shapes32)]) == 2
    assert "labels.json' must hold" in _one_line_error(capsys.readouterr().err)

    (broken / "config.yaml").write_text("recipe: [lenet\n")
    assert main(["train", "--resume", str(broken)]) == 2
    assert "config.yaml' is not valid YAML" in _one_line_error(capsys.readouterr().err)
    (broken / "config.yaml").write_text("- just\n- a list\n")
    assert main(["train", "--resume", str(broken)]) == 2
    assert "is not a mapping" in _one_line_error(capsys.readouterr().err)

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(lenet_run / "config.yaml", unfinished / "config.yaml")
    assert main(["train", str(shapes32), "--recipe", "lenet", "-o", str(unfinished)]) == 2
    assert "--resume" in _one_line_error(capsys.readouterr().err)
    assert main(["train", str(shapes32), "--recipe", "lenet", "-o", str(lenet_run)]) == 2
    assert "already holds a finished run" in _one_line_error(capsys.readouterr().err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    assert main(["train", str(shapes32), "--recipe", "lenet", "-o", str(other)]) == 2
    assert "not empty" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def _copy_run(lenet_run: Path, to: Path, finished: bool = True) -> Path:
    """A copy of the finished LeNet run; unfinished: its model gone, its state interrupted
    after stage 1's first epoch (as a Ctrl-C leaves it)."""
    run = Path(shutil.copytree(lenet_run, to))
    if not finished:
        (run / "model.keras").unlink()
        (run / "run_state.json").write_text('{"stage": 1, "epoch": 1, "status": "interrupted"}')
    return run


@pytest.mark.parametrize(
    "state",
    [None, "{}", "garbage\n", "[1, 2]", '{"completed_stages": "two"}', '{"status": "bogus"}',
     '{"status": "running", "completed_stages": -1}', "\x00" * 64],
)  # fmt: skip
def test_a_finished_run_is_never_retrained_whatever_its_state_file_holds(
    lenet_run, tmp_path, capsys, state
):
    """Before: a missing, empty or garbage state resumed from scratch (exit 0, model.keras
    replaced by a new training); a list was an AttributeError traceback."""
    run = _copy_run(lenet_run, tmp_path / "run")
    if state is None:
        (run / "run_state.json").unlink()
    else:
        (run / "run_state.json").write_text(state)
    model, history = (run / "model.keras").read_bytes(), (run / "history.csv").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    if state in (None, "{}"):
        assert "already finished" in line and str(run / "model.keras") in line
    else:
        assert f"'{run / 'run_state.json'}' is damaged" in line and "will not guess" in line
    assert (run / "model.keras").read_bytes() == model
    assert (run / "history.csv").read_text() == history
    with pytest.raises(RunError):
        train(resume=run, progress=False)


def test_an_unfinished_run_with_a_damaged_state_is_refused_not_restarted(
    lenet_run, shapes32, tmp_path, capsys
):
    run = _copy_run(lenet_run, tmp_path / "run", finished=False)
    (run / "run_state.json").write_text('{"stage": 1, "epo')  # cut short
    history = (run / "history.csv").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    assert "is damaged (not JSON" in _one_line_error(capsys.readouterr().err)
    assert (run / "history.csv").read_text() == history and not (run / "model.keras").exists()
    # a new run into that folder names the same damage (it holds a run all the same)
    assert main(["train", str(shapes32), "--recipe", "lenet", "-o", str(run)]) == 2
    assert "run_state.json' is damaged" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [("batch_size", -3, "'batch_size' -3"), ("batch_size", 0, "'batch_size' 0"),
     ("image_size", [0, 32], "'image_size' [0, 32]"), ("patience", -1, "'patience' -1"),
     ("lr", -0.1, "'stages[1].lr' -0.1"), ("epochs", 0, "'stages[1].epochs' 0"),
     ("stages", [], "has no stages")],
)  # fmt: skip
def test_resume_refuses_impossible_settings_in_config_yaml(
    lenet_run, tmp_path, capsys, key, value, shown
):
    """Before: ``batch_size: -3`` (and the others) reached Keras and ended in a traceback."""
    import yaml

    run = _copy_run(lenet_run, tmp_path / "run", finished=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    if key in ("lr", "epochs"):
        config["stages"][0][key] = value
    else:
        config[key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    history = (run / "history.csv").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "config.yaml' " in line and shown in line and "restore it" in line
    assert (run / "history.csv").read_text() == history and not (run / "model.keras").exists()


def test_train_on_a_read_only_file_system_is_one_line(lenet_run, shapes32, capsys):
    """Before: EROFS from the run folder's mkdir (a new run) or its lock (a resume) was a
    traceback."""
    from .readonly import read_only

    def fill(folder: Path) -> None:
        _copy_run(lenet_run, folder / "unfinished", finished=False)

    with read_only(fill) as disk:
        new = disk / "new"
        assert main(["train", str(shapes32), "--recipe", "lenet", "-o", str(new)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"'{new}'" in line and ("read-only" in line or "permission denied" in line)
        assert not new.exists()
        run = disk / "unfinished"
        assert main(["train", "--resume", str(run)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert str(run) in line and ("read-only" in line or "permission denied" in line)
        assert not (run / "model.keras").exists()
