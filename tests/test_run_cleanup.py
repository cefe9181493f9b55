"""A run that fails before it saved an epoch leaves its folder as it found it; one that fails
later stays resumable; a run's lock file lives only as long as the run."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from kerascope.cli import main
from kerascope.errors import RunError
from kerascope.locks import LockBusy, acquire
from kerascope.rundir import lock_run
from kerascope.training import train

from .test_train import make_shapes


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes32") / "data", n=8, size=32)


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """An empty weights cache: a transfer recipe fails after the run wrote its first files."""
    home = tmp_path / "home"
    monkeypatch.setenv("KERASCOPE_HOME", str(home))
    return home


def _transfer(data: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--recipe", "transfer", "--backbone", "resnet50",
            "--image-size", "32", "--epochs", "1", *extra]  # fmt: skip


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("kerascope: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_run_failing_before_its_first_epoch_leaves_nothing(shapes32, tmp_path, no_weights,
                                                            capsys):  # fmt: skip
    run = tmp_path / "run"
    assert main(_transfer(shapes32, "-o", str(run))) == 2
    first = _error_line(capsys.readouterr().err)
    assert "weights for 'resnet50' are not available" in first
    assert not run.exists()  # before: config.yaml, labels.json, split.json and .lock stayed

    # the same command again meets the same error, not "already holds an unfinished run"
    assert main(_transfer(shapes32, "-o", str(run))) == 2
    assert _error_line(capsys.readouterr().err) == first
    assert not run.exists()


def test_a_failed_run_in_a_given_empty_folder_leaves_the_folder_as_it_was(
    shapes32, tmp_path, no_weights, capsys
):
    run = tmp_path / "mine"
    run.mkdir()
    (run / ".keep").write_text("the user's\n")
    assert main(_transfer(shapes32, "-o", str(run))) == 2
    capsys.readouterr()
    assert sorted(p.name for p in run.iterdir()) == [".keep"]
    assert (run / ".keep").read_text() == "the user's\n"


def test_without_output_failures_do_not_pile_up_folders(shapes32, tmp_path, no_weights,
                                                       monkeypatch, capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(_transfer(shapes32)) == 2
    capsys.readouterr()
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


class FailAfter(keras.callbacks.Callback):
    """A crash (not Ctrl-C) at the end of epoch ``epoch``, after that epoch was saved."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_run_failing_after_an_epoch_stays_resumable_and_ends_without_a_lock(shapes32, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(shapes32, recipe="lenet", output=run, epochs=2, image_size=32, progress=False,
              callbacks=[FailAfter(0)])  # fmt: skip
    assert (run / "config.yaml").is_file()  # an epoch was saved: kept for --resume
    assert not (run / ".lock").exists()
    result = train(resume=run, progress=False)
    assert (result.run_dir / "model.keras").is_file()
    assert not (run / ".lock").exists()  # before: every finished run kept its .lock


def test_a_held_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    path = tmp_path / ".lock"
    held = acquire(path)
    with pytest.raises(LockBusy) as busy:
        acquire(path)
    assert "pid" in busy.value.holder
    with pytest.raises(RunError, match="is in use by another kerascope process"):
        with lock_run(tmp_path):
            pass
    held.release()
    assert not path.exists()
    with acquire(path):  # free again once released
        assert path.exists()
    assert not path.exists()
