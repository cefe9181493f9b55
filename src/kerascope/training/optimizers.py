"""Optimizers and learning-rate schedules of a training stage, by name.

The seed tutorials compile with ``'rmsprop'``, ``'adadelta'``, ``SGD(lr=1e-4, momentum=0.9)``
and ``Adam(lr=INIT_LR, decay=INIT_LR / EPOCHS)``. Keras 3 dropped the ``decay=`` argument; its
formula, ``lr / (1 + decay * step)`` per batch, is ``InverseTimeDecay(lr, decay_steps=1,
decay_rate=decay)``, so ``inverse-time:DECAY`` reproduces it exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from kerascope.errors import ConfigError

OPTIMIZERS = ("rmsprop", "adam", "sgd", "adadelta")

DEFAULT_LR = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2, "adadelta": 1.0}
"""The rate an optimizer gets when a run names it without ``lr`` and the recipe's stage used
another optimizer. Adadelta's is Keras 2's 1.0 (what the tutorials' ``'adadelta'`` ran with;
Keras 3's 0.001 barely moves)."""

DEFAULT_MOMENTUM = 0.9  # the fine-tuning guide's SGD momentum
SCHEDULES = ("constant", "inverse-time:DECAY", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.25  # fastai's fit_one_cycle: pct_start 0.25, div 25, div_final 1e5
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e5


def check_optimizer(name: str) -> str:
    """The canonical optimizer name, or one line listing the known ones."""
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; use {', '.join(OPTIMIZERS)}")
    return key


def check_schedule(schedule: str | None) -> str | None:
    """The canonical schedule (None: a constant rate), or one line saying what is accepted."""
    if schedule is None:
        return None
    text = str(schedule).strip().lower()
    if text in ("", "constant", "none"):
        return None
    if text in ("cosine", "onecycle", "one-cycle"):
        return text.replace("-", "")
    name, _, value = text.partition(":")
    if name == "inverse-time":
        try:
            decay = float(value)
        except ValueError:
            decay = -1.0
        if decay > 0:
            return f"inverse-time:{decay:g}"
    raise ConfigError(f"unknown lr schedule {schedule!r}; use {', '.join(SCHEDULES)} (e.g. "
                      "inverse-time:0.0001, Keras 2's decay=0.0001)")  # fmt: skip


def make_optimizer(name: str, lr: float, momentum: float | None = None,
                   schedule: str | None = None, steps: int = 1) -> Any:  # fmt: skip
    """A Keras optimizer for one stage.

    Args:
        name: one of `OPTIMIZERS`.
        lr: the (initial) learning rate.
        momentum: SGD's momentum (default the guide's 0.9); other optimizers take none.
        schedule: None (constant), ``inverse-time:DECAY``, ``cosine`` (to 0 over ``steps``) or
            ``onecycle`` (:func:`one_cycle`: up to ``lr`` and down again over ``steps``).
        steps: optimizer steps the stage runs (batches per epoch times epochs), for cosine
            and one-cycle.
    """
    import keras

    name = check_optimizer(name)
    rate: Any = float(lr)
    schedule = check_schedule(schedule)
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(float(lr), decay_steps=max(1, int(steps)))
    elif schedule == "onecycle":
        rate = one_cycle(float(lr), steps)
    elif schedule is not None:
        decay = float(schedule.partition(":")[2])
        rate = keras.optimizers.schedules.InverseTimeDecay(float(lr), decay_steps=1,
                                                           decay_rate=decay)  # fmt: skip
    if name == "sgd":
        m = DEFAULT_MOMENTUM if momentum is None else float(momentum)
        return keras.optimizers.SGD(learning_rate=rate, momentum=m)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=rate)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=rate)
    return keras.optimizers.RMSprop(learning_rate=rate)


def one_cycle(lr: float, steps: int, warmup: float = ONECYCLE_WARMUP) -> Any:
    """Smith's one-cycle policy as fastai's ``fit_one_cycle`` runs it: the rate rises from
    ``lr / 25`` to ``lr`` over the first quarter of ``steps`` and falls to ``lr / 1e5`` by the
    last step, both halves cosine-shaped (a ``keras.optimizers.schedules`` schedule).

    Example:
        >>> schedule = one_cycle(0.01, 100)  # doctest: +SKIP
        >>> float(schedule(25))  # doctest: +SKIP
        0.01
    """
    return _one_cycle_class()(lr, steps, warmup)


@functools.cache
def _one_cycle_class() -> type:
    """The schedule class, made once (Keras is imported only when a stage is built)."""
    import keras

    @keras.saving.register_keras_serializable(package="kerascope")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, lr: float, steps: int, warmup: float):
            self.lr, self.steps, self.warmup = float(lr), max(2, int(steps)), float(warmup)

        def __call__(self, step: Any) -> Any:
            ops = keras.ops
            up = max(1.0, round(self.steps * self.warmup))
            down = max(1.0, self.steps - 1 - up)
            step = ops.cast(step, "float32")
            low, end = self.lr / ONECYCLE_DIV, self.lr / ONECYCLE_FINAL_DIV

            def cosine(start: float, stop: float, t: Any) -> Any:  # start at t=0, stop at t=1
                t = ops.clip(t, 0.0, 1.0)
                return stop + (start - stop) * (1 + ops.cos(np.pi * t)) / 2

            rising = cosine(low, self.lr, step / up)
            falling = cosine(self.lr, end, (step - up) / down)
            return ops.where(step < up, rising, falling)

        def get_config(self) -> dict[str, Any]:
            return {"lr": self.lr, "steps": self.steps, "warmup": self.warmup}

    return OneCycle


def describe(stage: dict[str, Any]) -> str:
    """``sgd lr=0.0001 momentum 0.9, cosine``: a stage's optimizer as the report shows it."""
    text = f"{stage['optimizer']} lr={stage['lr']:g}"
    if stage.get("momentum") is not None:
        text += f" momentum {stage['momentum']:g}"
    if stage.get("schedule"):
        text += f", {stage['schedule']} schedule"
    return text
