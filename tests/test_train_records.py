"""What a run records of itself: the head and augmentation it really used (config.yaml), its
wall time and what it went on besides the epochs (report.md), and the new head's start at
chance. One small transfer run on 32 px shapes, where Lite0's features are large."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

from kerascope.report import time_lines
from kerascope.training import train
from kerascope.training.clock import RunClock

from .test_train import make_shapes


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    data = make_shapes(tmp_path_factory.mktemp("shapes"), n=5, size=32)
    out = tmp_path_factory.mktemp("records") / "run"
    # 12 training images, one step of 12 per epoch
    return train(data, recipe="transfer", output=out, epochs=2, image_size=32, batch_size=16,
                 progress=False)  # fmt: skip


def test_config_records_the_head_built_and_no_unused_rescale(small_run):
    """Before: ``head: null`` for the default head (which report.md names) and
    ``augment.rescale: 1/255``, which no model applies (each scales its 0..255 input)."""
    config = yaml.safe_load((small_run.run_dir / "config.yaml").read_text())
    assert config["head"] == ["gap", "dropout"] and config["dropout"] == 0.2
    names = [layer.name for layer in small_run.model.layers[2:]]
    assert names == ["avg_pool", "head_dropout", "predictions"]
    assert "rescale" not in config["augment"] and config["augment"]["rotation"] == 40.0


def test_the_new_head_starts_at_chance(small_run):
    """Epoch 1's training loss is its one step's loss before the update: ln 3 exactly with
    the output layer at zero, whatever the features (before: 1.012 here with Glorot weights,
    and over-confident where Lite0's features are large: a loss of 4.2 on 64 px photos)."""
    first, second = small_run.history
    assert first["loss"] == pytest.approx(math.log(3), abs=1e-4)
    assert second["loss"] != first["loss"]  # the step moved it


def test_report_names_the_training_time_and_the_wall_time(small_run):
    """Before: only "training time: 19 s" (the epochs) for a run whose wall time was 67 s."""
    report = (small_run.run_dir / "report.md").read_text()
    epochs = sum(row["seconds"] for row in small_run.history)
    match = re.search(r"- training time: (\d+) s \(the epochs, as history\.csv sums them\)\n"
                      r"- wall time: (\d+) s from start to end: epochs (\d+) s; (.*)\n",
                      report)  # fmt: skip
    assert match, report
    trained, wall, in_session = (int(match.group(i)) for i in (1, 2, 3))
    assert abs(trained - epochs) <= 1 and abs(in_session - epochs) <= 1
    state = json.loads((small_run.run_dir / "run_state.json").read_text())
    clock = state["outcome"]["clock"]
    assert clock["wall_seconds"] > clock["epoch_seconds"] + clock["parts"]["setup"] > 0
    assert wall == round(clock["wall_seconds"])
    assert clock["parts"]["checks"] > 0 and clock["parts"]["scan"] > 0
    assert "building, frozen prefix and compiling" in match.group(4)
    assert sum(clock["parts"].values()) + clock["epoch_seconds"] <= clock["wall_seconds"] + 0.1


def test_time_lines_split_the_wall_time_and_read_older_runs():
    clock = {"wall_seconds": 67.4, "epoch_seconds": 19.4, "resumed": False,
             "parts": {"checks": 6.0, "scan": 3.1, "setup": 14.0, "timing": 12.2,
                       "saving": 8.0}}  # fmt: skip
    lines = time_lines({"seconds": 19.4, "clock": clock})
    assert lines[1] == ("- wall time: 67 s from start to end: epochs 19 s; settings and checks "
                        "6 s; scan and decoding 3 s; building, frozen prefix and compiling 14 s; "
                        "timing steps for the time budget (compiling them first) 12 s; saving "
                        "checkpoints, model and plots 8 s; other 5 s")  # fmt: skip
    resumed = time_lines({"seconds": 30.0, "clock": {**clock, "resumed": True}})[1]
    assert "since the resume (this session)" in resumed
    assert time_lines({"seconds": 19.4}) == ["- training time: 19 s"]  # an older run's outcome


def test_clock_parts_split_a_stage_into_setup_timing_and_saving():
    clock = RunClock(started=0.0)
    for part, seconds in (("stage", 10.0), ("timing", 3.0), ("fit", 5.0), ("epochs", 4.0)):
        clock.add(part, seconds)
    summary = clock.summary()
    assert summary["parts"]["setup"] == pytest.approx(2.0)  # 10 - 5 (fit) - 3 (timing)
    assert summary["parts"]["saving"] == pytest.approx(1.0)  # fit's time outside its epochs
    assert summary["epoch_seconds"] == 4.0 and summary["parts"]["timing"] == 3.0
    assert np.isclose(sum(summary["parts"].values()) + 4.0, 10.0)
