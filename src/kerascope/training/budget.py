"""``--time-budget MINUTES``: a stage's epochs from its measured epoch time.

Why: a fixed number of epochs is too few on a fast machine and hours on a slow one; what a
user knows is how long they can wait. When a stage starts, :func:`epoch_seconds` times a few
real training and validation steps of the compiled stage (after a first step of each, which
compiles) and puts every variable back, so the run trains exactly as if unmeasured; then
:func:`plan_epochs` gives the stage its share of the time left (the recipe's ``Stage.share``
among the stages still to run, so time a stage saves by stopping early goes to the next),
at most the recipe's epochs. Given ``epochs`` always win (``settings.epochs_rule``).

What is counted: an epoch's training steps and validation steps, batches prepared the way
the stage prepares them (augmentation, a split prefix), one after the other: fit overlaps
the batch preparation with the step, so the estimate errs long and the run ends inside its
budget. Decoding the data, compiling and saving are outside the per-epoch figure but inside
the budget (the clock starts with the run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kerascope.training.config_file import save_config

PROBE_STEPS = 3  # timed steps of each kind after the first
MARGIN = 1.1  # per-epoch costs the probe does not see (callbacks, backups): 10 %


def epoch_seconds(trained: Any, train_data: Any, val_data: Any, steps: int = PROBE_STEPS) -> float:
    """Seconds one epoch of ``trained`` (compiled) takes on these batches, measured.

    Runs ``steps + 1`` training steps and as many validation steps (the first of each also
    compiles, as the stage's first epoch would; it is not counted), then restores the model's,
    optimizer's and metrics' variables (seed states included) to their values before.
    """
    import keras

    optimizer = trained.optimizer
    if not optimizer.built:
        optimizer.build(trained.trainable_variables)
    variables = [*trained.variables, *optimizer.variables, *trained.metrics_variables]
    saved = [keras.ops.convert_to_numpy(v.value).copy() for v in variables]
    try:
        train_step = _mean_seconds(lambda b: trained.train_on_batch(*b), train_data, steps)
        val_step = _mean_seconds(lambda b: trained.test_on_batch(*b), val_data, steps)
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)
        trained.reset_metrics()
    return MARGIN * (len(train_data) * train_step + len(val_data) * val_step)


def _mean_seconds(step: Any, batches: Any, steps: int) -> float:
    """Mean seconds of ``step(batch)`` with the batch prepared, after a first untimed one."""
    n = len(batches)
    step(batches[0])
    count = min(steps, max(1, n - 1))
    started = time.perf_counter()
    for i in range(count):
        out = step(batches[(1 + i) % n])
        _wait(out)
    return (time.perf_counter() - started) / count


def _wait(out: Any) -> None:
    """Block until an asynchronous (JAX) step has computed its results."""
    import keras

    values = out if isinstance(out, list | tuple) else [out]
    for value in values:
        try:
            float(keras.ops.convert_to_numpy(value))
        except (TypeError, ValueError):
            pass


def plan_epochs(seconds_left: float, epoch_seconds: float, shares: Sequence[float],
                most: int, least: int = 0) -> int:  # fmt: skip
    """Epochs for the stage starting now: ``shares[0]`` (its share) over the sum of
    ``shares`` (its own and the later stages') of ``seconds_left``, in whole epochs of
    ``epoch_seconds``, at most ``most``; one when only the whole time left holds an epoch,
    and 0 (the stage is skipped) when not even that does, unless ``least`` (the first
    stage: 1, a network needs its head trained)."""
    epoch = max(epoch_seconds, 1e-9)
    share = seconds_left * shares[0] / max(sum(shares), 1e-9)
    fits = int(share // epoch) or (1 if seconds_left >= epoch else 0)
    return max(int(least), min(int(most), fits))


def out_of_time(config: dict[str, Any], index: int, seconds_left: float) -> bool:
    """Whether a later stage need not even be measured: the time left is less than measuring
    and one epoch of the stage before took, and each stage trains more of the network than
    the one before, so neither its compile nor its epochs are shorter. Why: measuring
    compiles the stage, which for the whole backbone on a CPU costs as much as an epoch of a
    small dataset (a 1-minute budget spent 100 s compiling a stage it then skipped)."""
    if index == 0:
        return False
    before = config["stages"][index - 1]
    if before.get("skipped"):  # time only shrinks, and this stage costs more than that one
        return True
    cost = float(before.get("epoch_seconds") or 0.0) + float(before.get("measure_seconds") or 0)
    return seconds_left < cost


def describe_plan(epochs: int, most: int, epoch_s: float, seconds_left: float) -> str:
    """One line for the progress output: what the budget gave this stage and why."""
    if not epochs:
        return (f"  time budget: stage skipped, {seconds_left / 60:.1f} min left and an epoch "
                f"takes ~{epoch_s:.1f} s")  # fmt: skip
    capped = " (the recipe's most)" if epochs == most else ""
    return (
        f"  time budget: {epochs} epoch(s){capped} at ~{epoch_s:.1f} s each, "
        f"{seconds_left / 60:.1f} min left for this and later stages"
    )


def seconds_left(config: dict[str, Any], started: float) -> float:
    """Seconds of the run's time budget left (negative when spent), ``started`` being when
    the run's clock started (``time.monotonic``)."""
    return round(config["time_budget"] * 60 - (time.monotonic() - started), 1)


def plan_stage(
    trained: Any,
    train_data: Any,
    val_data: Any,
    run_dir: Path,
    config: dict[str, Any],
    index: int,
    started: float,
    progress: bool,
) -> bool:
    """Measure stage ``index`` (compiled) and set its epochs in ``config`` (written to the
    run's ``config.yaml``, with the time measured and left); False when it is skipped."""
    stage = config["stages"][index]
    began = time.monotonic()
    seconds = round(epoch_seconds(trained, train_data, val_data), 2)
    stage["measure_seconds"] = round(time.monotonic() - began, 1)  # compiling included
    left = seconds_left(config, started)
    shares = [s.get("share", 1.0) for s in config["stages"][index:]]
    epochs = plan_epochs(left, seconds, shares, stage["epochs"], least=int(index == 0))
    if not epochs:
        skip_stage(run_dir, config, index, started, progress, seconds)
        return False
    stage.update(epochs=epochs, epoch_seconds=seconds, seconds_left=left)
    save_config(run_dir, config)
    if progress:
        print(describe_plan(epochs, stage["most_epochs"], seconds, left))
    return True


def skip_stage(run_dir: Path, config: dict[str, Any], index: int, started: float,
               progress: bool, seconds: float | None = None) -> None:  # fmt: skip
    """Record stage ``index`` as skipped (0 epochs): the budget has no epoch of it left.
    ``seconds``: its measured epoch time (default: the stage before's, see `out_of_time`)."""
    stage = config["stages"][index]
    measured = seconds is not None
    before = config["stages"][index - 1] if index else {}
    if seconds is None:
        seconds = float(before["epoch_seconds"])
    left = seconds_left(config, started)
    stage.update(epochs=0, skipped=True, epoch_seconds=seconds, seconds_left=left)
    save_config(run_dir, config)
    if not progress:
        return
    if measured:
        print(describe_plan(0, stage["most_epochs"], seconds, left))
    elif before.get("skipped"):
        print("  time budget: stage skipped, as the stage before was (each trains more of the "
              "network than the one before)")  # fmt: skip
    else:  # `out_of_time`: not measured (its compile alone may cost more than the time left)
        measure = float(before.get("measure_seconds") or 0.0)
        print(
            f"  time budget: stage skipped, {left / 60:.1f} min left, less than measuring the "
            f"stage before and an epoch of it took (~{measure:.1f} s + ~{seconds:.1f} s)"
        )
