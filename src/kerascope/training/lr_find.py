"""The learning-rate finder (fastai's ``lr_find``, Smith 2015): train the recipe's first stage
for one short sweep, the rate growing exponentially from ``start_lr`` to ``end_lr`` step by step,
and read a good rate off the loss curve.

Why a sweep: the right rate depends on the data, the head and the batch size; one pass of ~100
batches on the very network that will train shows where the loss falls fastest and where it
blows up, in seconds rather than in a grid of runs. It runs as training does: the recipe's
model is built with its weights, its first stage prepared, and on a CPU (or whenever nothing is
augmented, as here) it is cut by :func:`kerascope.training.split.split_model`, so the frozen
prefix runs once on the inference engine and only the trainable part takes the steps. No
augmentation, no regularisers: the sweep measures the plain loss.

Nothing is written but the picture: no run directory, no model, no config. Training with the
suggestion is a separate ``kerascope train ... --lr VALUE``.

The suggestion is fastai's ``valley``: the middle of the longest stretch over which the
smoothed loss keeps falling (more robust than the steepest point, which noise moves about).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascope import interrupts
from kerascope.errors import ConfigError

SMOOTHING = 0.98  # fastai's exponential moving average of the loss (debiased)
DIVERGED = 4.0  # stop once the smoothed loss is this many times its lowest


@dataclass
class LRFindResult:
    """One sweep: the rates tried, raw and smoothed losses, the suggested rate and its index,
    the picture written (or None) and what trained (``head only``, ``from 'x' on``...)."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    index: int
    plot: Path | None
    trained: str
    optimizer: str


def valley(losses: np.ndarray) -> int:
    """Index of fastai's ``valley`` suggestion: the longest run over which the loss keeps
    falling (longest decreasing subsequence), then a point a half past a third into it."""
    n = len(losses)
    if n < 3:
        return int(np.argmin(losses)) if n else 0
    length = np.ones(n, int)
    best_start, best_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
        if length[best_end] < length[i]:
            best_end = i
            best_start = best_end - length[best_end]
    third = (best_end - best_start) / 3
    return int(min(n - 1, max(0, best_start + int(third) + int(third / 2))))


def smooth(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
    """Debiased exponential moving average, as fastai smooths the sweep's losses."""
    out, average = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * float(loss)
        out[i] = average / (1 - beta ** (i + 1))
    return out


def find_lr(
    data: str | os.PathLike,
    recipe: str = "transfer",
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    plot: str | os.PathLike | None = "lr_find.png",
    engine: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> LRFindResult:
    """Sweep the learning rate of ``recipe``'s first stage on ``data``; write ``plot``.

    Args:
        data, recipe: as for :func:`kerascope.training.train`.
        start_lr, end_lr, steps: the sweep, ``start_lr * (end_lr / start_lr) ** (i / (steps
            - 1))`` at step ``i``; it stops early once the loss has diverged.
        plot: where to write the loss-vs-lr picture (None: none).
        engine: as for ``train`` (the split path unless ``"keras"``).
        progress: called with ``(step, steps)`` after each step.
        **options: ``train``'s settings of the network and the data (``backbone``,
            ``batch_size``, ``image_size``, ``seed``, ``head``, ``dropout``, ``optimizer``,
            ``momentum``, ``weights``, ``class_weight``, ``val_split``, ``skip_bad``, ``layer``,
            ``pool``, ``precision``); others are ignored.

    Example:
        >>> result = find_lr("data/flowers", recipe="transfer")  # doctest: +SKIP
        >>> result.suggestion  # doctest: +SKIP
        0.0012
    """
    import keras

    from kerascope.data import make_sequences, scan_dataset
    from kerascope.training import recipes
    from kerascope.training.outputs import check_task, loss_and_metric
    from kerascope.training.run import use_split
    from kerascope.training.settings import resolve_config
    from kerascope.training.split import PrefixSequence, split_model
    from kerascope.training.whole import AugmentedTrainer, DeviceFeed

    if not 0 < start_lr < end_lr:
        raise ConfigError(f"the sweep needs 0 < start_lr < end_lr, got {start_lr:g} and "
                          f"{end_lr:g}")  # fmt: skip
    if steps < 5:
        raise ConfigError(f"the sweep needs at least 5 steps, got {steps}")
    o = options.get
    if str(data).lower().endswith(".csv"):
        raise ConfigError(f"the lr finder sweeps a folder dataset, not the multi-label CSV "
                          f"'{data}'; train it with --lr (leave out --find-lr)")  # fmt: skip
    from kerascope.training.devices import cluster_options

    if cluster_options(o("coordinator"), o("num_processes"), o("process_id"))[1] > 1:
        raise ConfigError("the lr finder sweeps in one process: run it once without "
                          "--coordinator, then start every process with --lr VALUE")  # fmt: skip
    config = resolve_config(
        data, recipe, None, o("backbone"), None, o("batch_size"), None, int(o("seed") or 0),
        float(o("val_split", 0.2)), bool(o("skip_bad")), o("class_weight"), o("unfreeze"),
        False, o("image_size"), None, layer=o("layer"), pool=o("pool") or "avg",
        head=o("head"), dropout=o("dropout"), optimizer=o("optimizer"),
        momentum=o("momentum"), weights=o("weights"), precision=o("precision"),
        task="binary" if o("binary") else "multiclass",
    )  # fmt: skip
    dataset = scan_dataset(config["data"], config["val_split"], config["seed"],
                           config["skip_bad"])  # fmt: skip
    check_task(config["task"], dataset.classes, config["data"])
    size = tuple(config["image_size"])
    images = make_sequences(dataset, size, config["batch_size"], config["seed"],
                            cache=True)["train"]  # fmt: skip
    images.fill_cache()
    keras.utils.set_random_seed(config["seed"])
    model = recipes.build_model(recipes.get_recipe(config["recipe"]), len(dataset.classes), size,
                                None, config["seed"], config["backbone"],
                                backbone_weights=config.get("weights") or "imagenet",
                                dropout=config["dropout"], layer=config.get("layer"),
                                pool=config.get("pool", "avg"), head=config.get("head"),
                                task=config["task"])  # fmt: skip
    recipes.prepare_stage(model, 0, config.get("unfreeze_index"))
    recipes.set_precision(model, "float32")
    parts = split_model(model) if use_split(engine, augmented=False) else None
    weights = recipes.class_weights(config["class_weight"], dataset.classes,
                                    dataset.counts["train"])  # fmt: skip
    if parts is not None:
        from kerascope.inference import compiled
        from kerascope.training.split import prefix_engine

        trained: Any = parts.suffix
        forward = compiled(parts.prefix, prefix_engine(engine))  # --engine's, as train's
        feed: Any = PrefixSequence(images, forward, None, class_weight=weights)
        what = f"from '{parts.cut}' on" if parts.cut else "head only"
    else:
        trained = AugmentedTrainer(model)
        feed = DeviceFeed(images, None, config["seed"], weights)
        what = "whole network"
    recipes.set_precision(trained if parts is not None else model,
                          config.get("precision", "float32"))  # fmt: skip
    stage = config["stages"][0]
    from kerascope.training.optimizers import make_optimizer

    optimizer = make_optimizer(stage["optimizer"], start_lr, stage.get("momentum"))
    loss, metric = loss_and_metric(config["task"], soft_targets=False)  # --binary: sigmoid
    trained.compile(optimizer=optimizer, loss=loss, weighted_metrics=[metric])
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    losses: list[float] = []
    best = np.inf
    epoch, batch = 0, 0
    for i, lr in enumerate(lrs):
        interrupts.check()  # a Ctrl-C swallowed in a finalizer (`kerascope.interrupts`)
        if batch == len(feed):
            epoch, batch = epoch + 1, 0
            feed.set_epoch(epoch)
        x, y, w = feed[batch]
        batch += 1
        optimizer.learning_rate = float(lr)
        out = trained.train_on_batch(x, y, sample_weight=w, return_dict=True)
        losses.append(float(out["loss"]))
        if progress:
            progress(i + 1, steps)
        smoothed = smooth(np.array(losses))[-1]
        if not np.isfinite(smoothed) or (i > 10 and smoothed > DIVERGED * best):
            break
        best = min(best, smoothed)
    raw = np.array(losses)
    tried = lrs[: len(raw)]
    curve = smooth(raw)
    finite = np.isfinite(curve)
    index = valley(np.where(finite, curve, np.inf)[: int(finite.sum())])
    result = LRFindResult(tried, raw, curve, float(tried[index]), index, None, what,
                          stage["optimizer"])  # fmt: skip
    if plot is not None:
        result.plot = plot_lr_find(result, plot)
    return result


def plot_lr_find(result: LRFindResult, path: str | os.PathLike) -> Path:
    """Loss against the rate (log scale), raw and smoothed, the suggestion marked."""
    from kerascope.report import _save, new_figure

    path = Path(path)
    fig, ax = new_figure(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed")
    ax.axvline(result.suggestion, color="C3", ls="--", lw=1)
    ax.plot([result.suggestion], [result.smoothed[result.index]], "o", color="C3",
            label=f"suggested lr {result.suggestion:.2g}")  # fmt: skip
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):
        low, first = float(finite.min()), float(finite[0])
        ax.set_ylim(low - 0.1 * abs(first - low) - 1e-3, max(first, low) * 1.3 + 1e-3)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr finder: {result.optimizer}, {result.trained} "
                 f"({len(result.lrs)} steps)")  # fmt: skip
    ax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
