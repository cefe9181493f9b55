"""The learning-rate finder (issue 21): fastai's valley on the smoothed sweep, a picture and a
suggestion, nothing else written, and the suggestion trains as well as the default rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kerascope.testing import grey_photo_crops
from kerascope.training.lr_find import find_lr, smooth, valley


def test_valley_is_inside_the_longest_fall():
    """Flat, then falling for 40 steps, then blowing up: the suggestion lies in the fall,
    past its first third (fastai's point), not at the minimum."""
    curve = np.concatenate([np.full(20, 2.0), np.linspace(2.0, 0.5, 40), np.linspace(0.6, 5, 20)])
    index = valley(curve)
    assert 20 <= index < 60 and index > 20 + 40 // 3
    noisy = smooth(curve + np.random.default_rng(0).normal(0, 0.05, len(curve)))
    assert 20 <= valley(noisy) < 65
    assert smooth(np.array([3.0, 3.0]))[0] == pytest.approx(3.0)  # debiased: no start at 0


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    return grey_photo_crops(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def sweep(crops, tmp_path_factory):
    plot = tmp_path_factory.mktemp("sweep") / "lr_find.png"
    return find_lr(crops, "transfer", image_size=64, batch_size=16, plot=plot)


def test_sweep_runs_the_heads_split_path_and_draws_the_suggestion(sweep):
    """The rates grow exponentially from 1e-7; the head trained on the split path (frozen
    backbone precomputed), the loss fell from its start before the suggestion (by a tenth of
    it: each step's loss is its batch's mean, no longer scaled by steps * batch / images) and
    by a third at its lowest."""
    assert sweep.trained == "head only" and sweep.optimizer == "rmsprop"
    assert sweep.lrs[0] == pytest.approx(1e-7)
    ratios = sweep.lrs[1:] / sweep.lrs[:-1]
    np.testing.assert_allclose(ratios, ratios[0])
    assert 1e-5 < sweep.suggestion < 1.0
    assert sweep.smoothed[sweep.index] < 0.9 * sweep.smoothed[0]
    assert sweep.smoothed.min() < 2 / 3 * sweep.smoothed[0]
    from PIL import Image

    with Image.open(sweep.plot) as picture:
        assert picture.size == (700, 450)


@pytest.mark.slow  # two runs, ~25 s
def test_suggested_lr_trains_at_least_as_well_as_the_default(crops, sweep, tmp_path):
    """The issue's check: same seed, one epoch each (longer, both reach 100 %); the suggested
    rate's validation accuracy is at least the default rate's less 2 points (3 classes of grey
    real-photo crops; with Keras's own initializers, outside the suite, one epoch gave 0.958
    at the suggested 0.007 vs 0.875 at the default 1e-3)."""
    from kerascope.training import train

    common = dict(recipe="transfer", epochs=1, image_size=64, batch_size=16, seed=0,
                  augment=False, progress=False)  # fmt: skip
    default = train(crops, output=tmp_path / "default", **common)
    suggested = train(crops, output=tmp_path / "suggested", lr=sweep.suggestion, **common)
    print(f"default lr 1e-3: {default.val_accuracy:.3f}; suggested {sweep.suggestion:.2g}: "
          f"{suggested.val_accuracy:.3f}")  # fmt: skip
    assert suggested.val_accuracy >= default.val_accuracy - 0.02


def test_cli_find_lr_writes_the_picture_and_no_run(crops, tmp_path, monkeypatch, capsys):
    from kerascope.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr_find.png").write_bytes(b"mine")  # a file of the user's: never replaced
    before = sorted(p.relative_to(crops) for p in crops.rglob("*"))
    code = main(["train", str(crops), "--find-lr", "--image-size", "64", "--batch-size", "16"])
    assert code == 0
    assert (tmp_path / "lr_find.png").read_bytes() == b"mine"
    assert (tmp_path / "lr_find-1.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find-1.png", "lr_find.png"]
    assert sorted(p.relative_to(crops) for p in crops.rglob("*")) == before
    err = capsys.readouterr().err
    assert "suggested lr " in err and "--lr " in err and "instead of --find-lr" in err


@pytest.mark.slow  # 6-9 s: out of make test-fast's loop (make test runs it)
def test_cli_lr_find_trains_with_the_suggestion_and_keeps_the_sweep(crops, tmp_path, capsys):
    """`--lr find`: the sweep first, then the run at its suggestion (config.yaml's lr), the
    picture kept in the run directory; nothing written outside it."""
    import yaml

    from kerascope.cli import main

    run = tmp_path / "run"
    code = main(["train", str(crops), "--lr", "find", "--epochs", "1", "--image-size", "64",
                 "--batch-size", "16", "--no-augment", "-o", str(run)])  # fmt: skip
    assert code == 0
    assert (run / "lr_find.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    err = capsys.readouterr().err
    suggested = float(err.split("suggested lr ")[1].split(";")[0])
    lr = yaml.safe_load((run / "config.yaml").read_text())["stages"][0]["lr"]
    assert lr == pytest.approx(suggested, rel=0.05) and lr != 1e-3
