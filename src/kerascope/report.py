"""What a run leaves behind for people: history table, training curves, a short Markdown report,
and the plots of an evaluation (confusion matrix, top-losses gallery).

Plots use Matplotlib's Agg backend (files only, no display), imported on first use so that
training and evaluation never pay for it unless a figure is drawn.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.files import atomic_open, atomic_path, write_text
from kerascope.output import printable_lines

HISTORY_FIELDS = (
    "epoch",
    "stage",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "train_seconds",
    "images_per_second",
)


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``history.csv`` as dicts of numbers (``[]`` when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str) -> float | int | None:
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def write_history(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write all rows at once through a temporary file: a crash never leaves half a table."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def new_figure(*grid: int, figsize: tuple[float, float], **subplots: Any) -> tuple[Any, Any]:
    """``plt.subplots(*grid, figsize=..., dpi=100, **subplots)`` without pyplot: a bare
    ``matplotlib.figure.Figure`` that saves itself (Agg for PNG) and is freed like any object.

    Why: pyplot's ``matplotlib.use("Agg")`` switched the backend of a program (a notebook)
    that called kerascope for its own plots; its import also cost a short ``train`` 0.1 CPU-s
    (0.7 s under cProfile). The figure finds a font for every glyph when it is laid out
    (`kerascope.fonts.fit_figure`): class names in Chinese drew as boxes.
    """
    from kerascope.fonts import figure_class

    fig = figure_class()(figsize=figsize, dpi=100)
    return fig, fig.subplots(*grid, **subplots)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out and write (atomically) a `new_figure`. Every title and text on it is shown as
    the terminal shows it (`printable`): a class or file name with control characters has no
    glyphs to draw. (Tick labels are drawn later: their makers pass `printable_lines` names.)"""
    from matplotlib.text import Text

    path = Path(path)
    for text in fig.findobj(Text):
        text.set_text(printable_lines(text.get_text()))
    fig.tight_layout()
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp)
    return path


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike, accuracy: str = "accuracy"
) -> Path:
    """Loss and accuracy per epoch, train beside validation; a dotted line at each new stage.
    ``accuracy``: the right panel's title (a multi-label run's is per label, at 0.5).

    The gap between the two curves is the quickest overfitting check there is.
    """
    fig, axes = new_figure(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                label = "validation" if prefix else "train"
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=label)
        for prev, row in zip(history, history[1:], strict=False):
            if row.get("stage") != prev.get("stage"):
                ax.axvline(row["epoch"] - 0.5, color="gray", linestyle=":")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 1.5
        ax.set_title(accuracy if metric == "accuracy" else metric)
        ax.grid(alpha=0.3)
        if metric == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.legend()
    return _save(fig, path)


def write_run_report(
    path: str | os.PathLike,
    config: dict[str, Any],
    summary: str,
    outcome: dict[str, Any],
    extra: Sequence[str] = (),
) -> Path:
    """A short ``report.md``: data, result, time, and how to use the model. ``extra``: lines
    (Markdown) after the result, e.g. a multi-label run's per-label table."""
    run_dir = Path(config["output"])
    multilabel = config.get("task") == "multilabel"
    # a multi-label run's Keras accuracy is per label at 0.5, not "the right class"
    accuracy = "per-label accuracy (at 0.5)" if multilabel else "accuracy"
    data = "DATA.csv" if multilabel else "DATA"
    size = "x".join(str(s) for s in config["image_size"])
    backbone = config.get("backbone")
    body = f"{backbone} backbone, " if isinstance(backbone, str) else ""
    if isinstance(backbone, list):  # the features recipe: several, concatenated
        body = f"{' + '.join(backbone)} features, "
    from kerascope.training.optimizers import describe

    ran = outcome.get("stage_epochs")  # None: a run finished before it was recorded
    stages = ", then ".join(_stage_text(s, ran, i, config, describe(s))
                            for i, s in enumerate(config["stages"]))  # fmt: skip
    lines = [
        f"# Training run `{run_dir.name}`",
        "",
        f"Recipe **{config['recipe']}** ({body}{size} px, batch {config['batch_size']}): "
        f"{stages}; seed {config['seed']}, Keras {config['versions']['keras']} on "
        f"{config['backend']}, precision {_precision(config)}.",
        "",
        *_devices_note(config),
        *_model_notes(config),
        *_choices_note(config),
        *_regularisers_note(config),
        "## Data",
        "",
        "```",
        summary,
        "```",
        "",
        *_skipped_note(path),
        "## Result",
        "",
        f"- saved model (`model.keras`): epoch {outcome['best_epoch']} (lowest validation "
        f"loss), validation {accuracy} **{_pct(outcome['val_accuracy'])}**, loss "
        f"{outcome['val_loss']:.4f}",
        f"- last epoch ({outcome['epochs']}): validation {accuracy} "
        f"{_pct(outcome['final_val_accuracy'])}; best over epochs "
        f"{_pct(outcome['best_val_accuracy'])} (not necessarily the saved epoch)",
        *time_lines(outcome),
        "",
        "![training curves](curves.png)",
        "",
        *extra,
        "## Use it",
        "",
        "```",
        f"kerascope classify PHOTOS --model {run_dir}",
        f"kerascope evaluate {run_dir} {_data_path(config, data)}",  # a label CSV's path too
        f"kerascope predict {run_dir} FOLDER -o predictions.csv",
        "```",
        "",
        "```python",
        "import kerascope",
        f'results = kerascope.classify("photos/", model="{run_dir}")',
        "```",
        "",
    ]
    return write_text(path, "\n".join(lines))


TIME_PARTS = (
    ("checks", "settings and checks"),
    ("scan", "scan and decoding"),
    ("setup", "building, frozen prefix and compiling"),
    ("timing", "timing steps for the time budget (compiling them first)"),
    ("saving", "saving checkpoints, model and plots"),
)
"""The parts of a run's wall time besides its epochs (`kerascope.training.clock`)."""


def time_lines(outcome: dict[str, Any]) -> list[str]:
    """The report's time: the epochs' time and, when the run measured it (``outcome["clock"]``,
    `kerascope.training.clock.RunClock.summary`), the wall time with what the rest was.
    Why: a short run spends most of its wall time outside its epochs (a ``--time-budget 1``
    finetune: 19 s of epochs in 67 s), and "training time" alone read as the whole."""
    seconds = outcome.get("seconds") or 0.0
    clock = outcome.get("clock")
    if not clock:  # a run finished before the clock was kept
        return [f"- training time: {seconds:.0f} s"]
    wall = float(clock["wall_seconds"])
    # from `train`'s call (the command's imports of Keras and JAX come before it)
    when = "since the resume (this session)" if clock.get("resumed") else "from start to end"
    parts = [f"epochs {clock['epoch_seconds']:.0f} s"]
    parts += [f"{label} {clock['parts'][name]:.0f} s" for name, label in TIME_PARTS
              if round(clock["parts"].get(name, 0.0)) >= 1]  # fmt: skip
    rest = wall - clock["epoch_seconds"] - sum(clock["parts"].values())
    if round(rest) >= 1:
        parts.append(f"other {rest:.0f} s")
    return [f"- training time: {seconds:.0f} s (the epochs, as history.csv sums them)",
            f"- wall time: {wall:.0f} s {when}: {'; '.join(parts)}"]  # fmt: skip


def _stage_text(stage: dict[str, Any], ran: Sequence[int] | None, index: int,
                config: dict[str, Any], optimizer: str) -> str:  # fmt: skip
    """``6 epochs adam lr=0.001``, or ``4 of 6 epochs adam lr=0.001 (stopped early: ...)``
    when early stopping ended the stage (before, the report gave the epochs asked for while
    history.csv had fewer rows)."""
    asked = int(stage["epochs"])
    done = ran[index] if ran is not None and index < len(ran) else asked
    if stage.get("skipped") or done >= asked:
        return f"{asked} epoch{'s' if asked != 1 else ''} {optimizer}"
    patience = config.get("patience")
    return (f"{done} of {asked} epochs {optimizer} (stopped early: no lower validation loss "
            f"for {patience} epoch{'s' if patience != 1 else ''})")  # fmt: skip


def _data_path(config: dict[str, Any], placeholder: str) -> str:
    """The data the run trained from, for the report's commands (``placeholder`` when the
    configuration has none); quoted for a shell when it needs it."""
    import shlex

    data = config.get("data")
    return shlex.quote(str(data)) if data else placeholder


def _precision(config: dict[str, Any]) -> str:
    """``--precision``, and the split trainer's frozen prefix when it computed in another
    (``prefix_precision``: training/split.py keeps it in float32, whatever the option)."""
    precision = config.get("precision", "float32")
    prefix = config.get("prefix_precision")
    if prefix and prefix != precision:
        return f"{precision} (split training's frozen prefix in {prefix})"
    return precision


def _devices_note(config: dict[str, Any]) -> list[str]:
    """Where the run trained and its learning-rate rule (nothing for runs made before
    ``--devices``). The images per device are those each step ran: fewer training images
    than the batch make a smaller step (4 images on 4 devices: 1 each, not 32 / 4)."""
    devices = config.get("devices")
    if not devices:
        return []
    where = f"{devices['count']} device(s) ({', '.join(devices['names'])})"
    per_device = devices["per_device_batch"]
    train = (config.get("counts") or {}).get("train")
    if isinstance(train, dict) and train:
        from kerascope.data.loader import fitted_batch

        count = max(1, int(devices["count"]))
        step = fitted_batch(config["batch_size"], sum(train.values()), count)
        per_device = min(per_device, step // count)
    return [f"Devices: {where} in {devices['processes']} process(es), "
            f"{per_device} images per device per step; learning rate "
            f"{devices['lr_rule']}.", ""]  # fmt: skip


def _model_notes(config: dict[str, Any]) -> list[str]:
    """The head, what fine-tuning trains and the backbone's weights, for backbone recipes."""
    if not config.get("backbone"):
        return []
    k = len(config.get("classes") or []) or "N"
    parts = config.get("head") or (["gap", "dropout"] if config["recipe"] != "features"
                                   else ["dropout"])  # fmt: skip
    shown = [p.replace("dropout", f"dropout {config['dropout']:g}") if p == "dropout" else
             p.replace(":", " ") for p in parts]  # fmt: skip
    task = config.get("task")  # binary: the seed's one sigmoid unit; multilabel: one per label
    out = {"binary": "dense 1 sigmoid", "multilabel": f"dense {k} sigmoid"}.get(task)
    lines = [f"- head: {' -> '.join([*shown, out or f'dense {k} softmax'])}"]
    if config.get("unfreeze_index") is not None:
        lines.append(f"- fine-tuning (stage 2) trains the backbone from layer index "
                     f"{config['unfreeze_index']} on (keras.applications numbering; --unfreeze "
                     f"{config['unfreeze']}), BatchNorm layers kept frozen")  # fmt: skip
    if config.get("weights"):
        files = config["weights"] if isinstance(config["weights"], list) else [config["weights"]]
        lines.append(f"- backbone weights: {', '.join(f'`{f}`' for f in files)}")
    return [*lines, ""]


def _choices_note(config: dict[str, Any]) -> list[str]:
    """Augmentation and class weights: choices that change the result, which the report left
    out (``--rotation 7 --no-flip``, ``--class-weight auto``) though it promises them all."""
    augment = config.get("augment")
    if not augment:
        shown = "none"
    else:
        flips = [n for n in ("horizontal", "vertical") if augment.get(f"{n}_flip")]
        shown = ", ".join([
            f"rotation {augment.get('rotation', 0):g}°",
            f"shift {augment.get('width_shift', 0):g} x {augment.get('height_shift', 0):g}",
            f"shear {augment.get('shear', 0):g}",
            f"zoom {augment.get('zoom', 0):g}",
            f"flips {' and '.join(flips) if flips else 'none'}",
            f"fill {augment.get('fill_mode', 'nearest')}",
        ])  # fmt: skip
    weight = config.get("class_weight")
    if weight == "auto":
        weights = "auto (n / (k * n_c): every class weighs the same in the loss)"
    elif isinstance(weight, dict):
        weights = ", ".join(f"{k} {float(v):g}" for k, v in weight.items())
    else:
        weights = "none (every image weighs the same)"
    return [f"Augmentation: {shown}. Class weights: {weights}.", ""]


def _regularisers_note(config: dict[str, Any]) -> list[str]:
    """Regularisers, augmentation policy and a head taken from an earlier run: what changes
    the result beyond recipe and stages (``config.yaml`` records them too)."""
    parts = [f"{name.replace('_', ' ')} {config[name]:g}"
             for name in ("label_smoothing", "mixup", "cutmix") if config.get(name)]  # fmt: skip
    policy = (config.get("augment") or {}).get("policy")
    if policy:
        parts.append(f"augmentation policy {policy}")
    if config.get("init_from"):
        parts.append(f"started from the head (and matching layers) of `{config['init_from']}`")
    return [f"Also: {'; '.join(parts)}.", ""] if parts else []


def _skipped_note(report: str | os.PathLike) -> list[str]:
    if not (Path(report).parent / "skipped.txt").is_file():
        return []
    return ["Every left-out or ignored file is listed in `skipped.txt`.", ""]


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Confusion matrix as counts, rows true and columns predicted, shaded by row share."""
    k = len(classes)
    side = min(16.0, 2.0 + 0.6 * k)
    fig, ax = new_figure(figsize=(side, side))
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [printable_lines(name) for name in classes]  # tick labels are drawn later
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    return _save(fig, path)


def image_grid(count: int, cols: int, tile_height: float) -> tuple[Any, Any]:
    """A figure of ``count`` tiles, ``cols`` wide (fewer when there are fewer images), every
    axis blank until an image is drawn on it: the grid of the galleries."""
    n = max(1, count)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(rows, cols, figsize=(3 * cols, tile_height * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def plot_gallery(
    images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike, cols: int = 4
) -> Path:
    """Images in a grid, each titled (true / predicted / probability for top losses)."""
    fig, axes = image_grid(len(images), cols, 3.8)
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
