"""What a resumed run may change: ``--epochs`` and ``--patience`` (and ``--precision``); every
other option that differs from ``config.yaml`` is refused in one line naming it, never
ignored (`kerascope.training.resume`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kerascope.cli import main
from kerascope.errors import RunError
from kerascope.training import train

from .test_run_integrity import _one_line_error
from .test_train import StopAfter, make_shapes


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes32") / "data", n=10, size=32)


def test_resume_honours_epochs_and_refuses_conflicting_options(shapes32, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(shapes32, recipe="lenet", output=run, epochs=3, image_size=32, progress=False,
              callbacks=[StopAfter(1)])  # fmt: skip
    with pytest.raises(RunError, match="--batch-size 8.*batch_size 32"):
        train(resume=run, batch_size=8, progress=False)
    assert main(["train", "--resume", str(run), "--recipe", "scratch"]) == 2
    assert "--recipe scratch" in _one_line_error(capsys.readouterr().err)
    # Before: accepted and ignored (transfer is the default recipe; --binary and
    # --time-budget were no run settings); an augmentation option named --no-augment.
    for flags, said in (
        (["--recipe", "transfer"], "with --recipe transfer: the run was started with recipe lenet"),
        (["--binary"], "with --binary: the run was started with a multiclass head"),
        (
            ["--time-budget", "1"],
            "with --time-budget 1.0: the run was started with no time "
            "budget (epochs from the epochs)",
        ),
        (["--rotation", "5"], "with --rotation 5: the run was started with --rotation 30 ("),
    ):
        assert main(["train", "--resume", str(run), *flags]) == 2
        assert said in _one_line_error(capsys.readouterr().err)
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert "already run 2 epoch(s)" in _one_line_error(capsys.readouterr().err)
    result = train(resume=run, epochs=5, seed=0, time_budget=0, progress=False)  # as saved
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.config["stages"][0]["epochs"] == 5
    assert main(["train", "--resume", str(run), "--epochs", "9"]) == 2
    assert "already finished" in _one_line_error(capsys.readouterr().err)
