"""--lr-schedule onecycle (issue 21): fastai's fit_one_cycle curve, and a run that follows it."""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.errors import ConfigError
from kerascope.training.optimizers import check_schedule, make_optimizer, one_cycle


def test_one_cycle_rises_to_lr_over_a_quarter_then_falls_to_lr_over_1e5():
    """fastai's curve, each step taken at its middle ((i + 0.5) / steps): from lr/25, cosine
    up to lr at 25 % of the stage, cosine down to lr/1e5 at its end; halfway up it is the
    midpoint; monotonic in each phase; after the last step, the end of the curve."""
    lr, steps = 0.01, 200
    schedule = one_cycle(lr, steps)
    curve = np.array([float(schedule(i)) for i in range(steps)])
    assert lr / 25 < curve[0] < 1.01 * lr / 25  # the curve at 0.25 % of the stage
    assert np.argmax(curve) == 50 and curve[50] == pytest.approx(lr, rel=1e-4)
    assert curve[-1] < 1e-3 * lr and float(schedule(steps)) == pytest.approx(lr / 1e5, rel=1e-3)
    assert float(schedule(24.5)) == pytest.approx((lr + lr / 25) / 2, rel=1e-5)  # at 1/8
    assert float(schedule(124.5)) == pytest.approx((lr + lr / 1e5) / 2, rel=1e-5)  # at 5/8
    assert np.all(np.diff(curve[:51]) > 0) and np.all(np.diff(curve[50:]) < 0)


@pytest.mark.parametrize(("steps", "rates"), [(1, [0.75]), (2, [1.0, 0.25]),
                                               (3, [0.7601, 0.75, 0.117])])  # fmt: skip
def test_a_stage_of_few_steps_trains_at_the_curves_rates(steps, rates):
    """A stage of one step trained at lr/25 (fastai's curve at its start), so a finetune with
    one step per stage barely moved and ended below chance; two steps spent the second at
    lr/1e5. Each step now takes the curve at its middle."""
    schedule = one_cycle(1.0, steps)
    assert [float(schedule(i)) for i in range(steps)] == pytest.approx(rates, abs=2e-3)


def test_onecycle_is_a_named_schedule_of_every_optimizer():
    assert check_schedule("onecycle") == check_schedule("One-Cycle") == "onecycle"
    optimizer = make_optimizer("sgd", 0.1, schedule="onecycle", steps=40)
    assert float(optimizer.learning_rate) == pytest.approx(0.1 / 25, rel=0.2)  # its first step
    with pytest.raises(ConfigError, match="onecycle"):
        check_schedule("triangle")


def test_a_run_with_onecycle_records_the_curve(tmp_path):
    """history.csv's lr column (the rate after each epoch's last step) follows the curve."""
    from kerascope.report import read_history
    from kerascope.training import train

    from .test_train import make_shapes

    data = make_shapes(tmp_path / "shapes", n=8, size=32)
    run = train(data, recipe="lenet", output=tmp_path / "run", epochs=4, batch_size=8,
                image_size=32, lr_schedule="onecycle", lr=0.01, progress=False,
                augment=False)  # fmt: skip
    history = read_history(run.run_dir / "history.csv")
    steps_per_epoch = 3  # 18 training images (75 % of 24) in batches of 8
    curve = one_cycle(0.01, steps_per_epoch * 4)
    for row in history:
        expected = float(curve(row["epoch"] * steps_per_epoch))
        assert row["lr"] == pytest.approx(expected, rel=1e-4)
    assert run.config["stages"][0]["schedule"] == "onecycle"
