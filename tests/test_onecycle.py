"""--lr-schedule onecycle (issue 21): fastai's fit_one_cycle curve, and a run that follows it."""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.errors import ConfigError
from kerascope.training.optimizers import check_schedule, make_optimizer, one_cycle


def test_one_cycle_rises_to_lr_over_a_quarter_then_falls_to_lr_over_1e5():
    """lr/25 at step 0, cosine up to lr at 25 % of the steps, cosine down to lr/1e5 at the
    last step; halfway down it is the midpoint; monotonic in each phase."""
    lr, steps = 0.01, 200
    curve = np.array([float(one_cycle(lr, steps)(i)) for i in range(steps)])
    assert curve[0] == pytest.approx(lr / 25, rel=1e-5)
    assert np.argmax(curve) == 50 and curve[50] == pytest.approx(lr, rel=1e-6)
    assert curve[-1] == pytest.approx(lr / 1e5, rel=1e-3)
    assert curve[25] == pytest.approx((lr + lr / 25) / 2, rel=1e-5)  # cosine: halfway at 1/2
    mid = 50 + (steps - 1 - 50) / 2
    assert float(one_cycle(lr, steps)(mid)) == pytest.approx((lr + lr / 1e5) / 2, rel=1e-5)
    assert np.all(np.diff(curve[:51]) > 0) and np.all(np.diff(curve[50:]) < 0)


def test_onecycle_is_a_named_schedule_of_every_optimizer():
    assert check_schedule("onecycle") == check_schedule("One-Cycle") == "onecycle"
    optimizer = make_optimizer("sgd", 0.1, schedule="onecycle", steps=40)
    assert float(optimizer.learning_rate) == pytest.approx(0.1 / 25, rel=1e-5)
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
