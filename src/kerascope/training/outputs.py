"""What a run's network outputs and how that is trained: its ``task``.

* ``multiclass`` (the default): Dense(classes, softmax), sparse categorical cross-entropy.
* ``binary`` (``train --binary`` on a two-class folder): the seed's cats-vs-dogs head,
  Dense(1, sigmoid) giving the probability of class 1, binary cross-entropy. Loading the run
  shows it as two classes (`kerascope.zoo.two_class`), so evaluate, predict, validate and
  classify read it like any two-class model.
* ``multilabel`` (a CSV of ``path,labels``: `kerascope.data.multilabel`): Dense(labels,
  sigmoid), binary cross-entropy on multi-hot targets; each label is a yes/no of its own.
"""

from __future__ import annotations

from typing import Any

from kerascope.errors import ConfigError

TASKS = ("multiclass", "binary", "multilabel")


def task_of(config: dict[str, Any]) -> str:
    """A run's task (runs written before tasks existed are multiclass)."""
    return str(config.get("task") or "multiclass")


def check_task(task: str, classes: list[str] | None = None, data: Any = "") -> None:
    """Refuse an unknown task, and a binary head on a folder without exactly two classes
    (``classes`` None: the name only, before the folder is scanned).

    Raises:
        ConfigError: one line naming the folder, its classes and the fix.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "binary" and classes is not None and len(classes) != 2:
        shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
        raise ConfigError(f"--binary needs exactly two classes, but '{data}' has "
                          f"{len(classes)} ({shown}); leave out --binary for a softmax "
                          "head")  # fmt: skip


def check_regularisers(task: str, config: dict[str, Any]) -> None:
    """Label smoothing, mixup and CutMix build soft categorical targets: a sigmoid head has
    none, so they are refused with it rather than silently ignored."""
    if task == "multiclass":
        return
    used = [name for name in ("label_smoothing", "mixup", "cutmix") if config.get(name)]
    if used:
        flag = "--binary" if task == "binary" else "a multi-label dataset"
        raise ConfigError(f"{', '.join('--' + u.replace('_', '-') for u in used)} "
                          f"cannot be used with {flag} (its sigmoid head has no categorical "
                          "targets to soften or mix); leave them out")  # fmt: skip


def loss_and_metric(task: str, soft_targets: bool) -> tuple[str, Any]:
    """The loss and the ``accuracy`` metric a stage compiles with (padded rows excluded)."""
    from kerascope.training.padded import RealAccuracy, RealBinaryAccuracy, SoftRealAccuracy

    if task in ("binary", "multilabel"):
        return "binary_crossentropy", RealBinaryAccuracy()
    if soft_targets:
        return "categorical_crossentropy", SoftRealAccuracy()
    return "sparse_categorical_crossentropy", RealAccuracy()
