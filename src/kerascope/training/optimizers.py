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
                   schedule: str | None = None, steps: int = 1,
                   rates: dict[str, float] | None = None) -> Any:  # fmt: skip
    """A Keras optimizer for one stage.

    Args:
        name: one of `OPTIMIZERS`.
        lr: the (initial) learning rate.
        momentum: SGD's momentum (default the guide's 0.9); other optimizers take none.
        schedule: None (constant), ``inverse-time:DECAY``, ``cosine`` (to 0 over ``steps``) or
            ``onecycle`` (:func:`one_cycle`: up to ``lr`` and down again over ``steps``).
        steps: optimizer steps the stage runs (batches per epoch times epochs), for cosine
            and one-cycle; :func:`set_total_steps` may change it before the stage trains,
            without a new compilation (a time budget decides the epochs after measuring).
        rates: discriminative learning rates, ``{variable path: multiplier of lr}``
            (:func:`layer_rates`); variables not named train at ``lr``.
    """
    import keras

    name = check_optimizer(name)
    rate: Any = float(lr)
    schedule = check_schedule(schedule)
    if schedule == "cosine":
        rate = _one_cycle_class()(float(lr), steps, 0.0)
    elif schedule == "onecycle":
        rate = one_cycle(float(lr), steps)
    elif schedule is not None:
        decay = float(schedule.partition(":")[2])
        rate = keras.optimizers.schedules.InverseTimeDecay(float(lr), decay_steps=1,
                                                           decay_rate=decay)  # fmt: skip
    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adadelta": keras.optimizers.Adadelta,
        "rmsprop": keras.optimizers.RMSprop,
    }
    kind = classes[name] if not rates else _per_variable(classes[name])
    kwargs = {"momentum": DEFAULT_MOMENTUM if momentum is None else float(momentum)} if (
        name == "sgd") else {}  # fmt: skip
    optimizer = kind(learning_rate=rate, **kwargs)
    if rates:
        optimizer.rates = {str(k): float(v) for k, v in rates.items() if float(v) != 1.0}
    if isinstance(rate, _one_cycle_class()):  # its length, a variable the step reads
        rate.total = optimizer.add_variable((), initializer=keras.initializers.Constant(
            rate.steps), dtype="float32", name="schedule_steps")  # fmt: skip
    return optimizer


def set_total_steps(optimizer: Any, steps: int) -> None:
    """Set the number of steps a stage's one-cycle or cosine schedule spans (a no-op for
    other rates). Why: a time budget knows the epochs only after timing a few steps, and
    the schedule reads this from an optimizer variable, so the compiled step stays valid."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, _one_cycle_class()) and schedule.total is not None:
        schedule.steps = float(max(1, int(steps)))
        schedule.total.assign(schedule.steps)


def layer_rates(model: Any, ratio: float) -> dict[str, float]:
    """Discriminative learning rates, fastai's ``slice(lr / ratio, lr)``: the head trains at
    ``lr``; a backbone layer at position ``r`` (0 its first layer, 1 its last) at
    ``lr * ratio ** -(1 - r / 2)``, so from ``lr / ratio`` at the bottom to ``lr / sqrt(ratio)``
    at the top (ratio 100: lr/100 .. lr/10, fastai's three groups made continuous). Why:
    early layers hold generic features that a high rate would wreck; late ones adapt.

    Returns ``{variable path: multiplier}`` for the backbone's variables (the nested model
    inside a transfer model; none without one)."""
    if not ratio or ratio == 1:
        return {}
    nested = [layer for layer in model.layers if getattr(layer, "layers", None)]
    if not nested:
        return {}
    leaves = _leaves(nested[0])
    with_weights = [layer for layer in leaves if layer.weights]
    n = max(1, len(with_weights) - 1)
    out = {}
    for i, layer in enumerate(with_weights):
        multiplier = float(ratio) ** -(1.0 - (i / n) / 2.0)
        for variable in layer.weights:
            out[variable.path] = multiplier
    return out


def _leaves(layer: Any) -> list[Any]:
    inner = getattr(layer, "layers", None)
    return [leaf for x in inner for leaf in _leaves(x)] if inner else [layer]


@functools.cache
def _per_variable(base: type) -> type:
    """``base`` (a Keras optimizer class) whose update scales the rate per variable by
    ``self.rates``: variables are grouped by multiplier and each group goes through the
    backend's own update at ``lr * multiplier``, so Adam's and RMSprop's normalised steps
    scale too (scaling gradients would not) and the torch backend's fused updates still run."""

    def _backend_update_step(self: Any, grads: list, variables: list, learning_rate: Any) -> None:
        rates = getattr(self, "rates", {})
        groups: dict[float, tuple[list, list]] = {}
        for grad, variable in zip(grads, variables, strict=True):
            group = groups.setdefault(rates.get(variable.path, 1.0), ([], []))
            group[0].append(grad)
            group[1].append(variable)
        for multiplier, (g, v) in groups.items():
            rate = learning_rate if multiplier == 1.0 else learning_rate * multiplier
            base._backend_update_step(self, g, v, rate)

    return type(base.__name__, (base,), {"_backend_update_step": _backend_update_step,
                                         "__module__": __name__})  # fmt: skip


def one_cycle(lr: float, steps: int, warmup: float = ONECYCLE_WARMUP) -> Any:
    """Smith's one-cycle policy as fastai's ``fit_one_cycle`` draws it: the rate rises from
    ``lr / 25`` to ``lr`` over the first quarter of the stage and falls to ``lr / 1e5`` at its
    end, both halves cosine-shaped (a ``keras.optimizers.schedules`` schedule).

    Step ``i`` of ``steps`` takes the curve at the middle of its share of the stage,
    ``(i + 0.5) / steps``. Why: fastai takes it at ``i / steps``, so a stage of one step
    trained at ``lr / 25`` (a ``--epochs 1,1,1`` finetune on 24 images barely moved from its
    start) and of a few steps spent its last at ``lr / 1e5``; at the middle, one step trains
    at 0.75 lr, two at lr and 0.25 lr, and a long stage follows fastai's curve within half a
    step.

    Example:
        >>> schedule = one_cycle(0.01, 100)  # doctest: +SKIP
        >>> round(float(schedule(25)), 5)  # doctest: +SKIP
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
            self.lr, self.steps, self.warmup = float(lr), float(max(1, int(steps))), float(warmup)
            self.total: Any = None  # an optimizer variable holding ``steps`` (make_optimizer)

        def __call__(self, step: Any) -> Any:
            ops = keras.ops
            steps = self.steps if self.total is None else ops.cast(self.total, "float32")
            where = (ops.cast(step, "float32") + 0.5) / steps  # the step's middle, 0..1

            def cosine(start: float, stop: float, t: Any) -> Any:  # start at t=0, stop at t=1
                t = ops.clip(t, 0.0, 1.0)
                return stop + (start - stop) * (1 + ops.cos(np.pi * t)) / 2

            if self.warmup == 0:  # plain cosine to 0 (Keras's CosineDecay)
                return cosine(self.lr, 0.0, where)
            low, end = self.lr / ONECYCLE_DIV, self.lr / ONECYCLE_FINAL_DIV
            rising = cosine(low, self.lr, where / self.warmup)
            falling = cosine(self.lr, end, (where - self.warmup) / (1.0 - self.warmup))
            return ops.where(where < self.warmup, rising, falling)

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
    if stage.get("lr_ratio", 1.0) != 1.0:
        ratio = stage["lr_ratio"]
        text += f", backbone at lr/{ratio:g}..lr/{ratio**0.5:g}"
    if stage.get("unfreeze") == "all":
        text += ", whole backbone"
    if stage.get("skipped"):
        text += " (skipped: the time budget was spent)"
    elif stage.get("epoch_seconds") is not None:
        text += f" (epochs from the time budget: ~{stage['epoch_seconds']:g} s each)"
    return text
