"""``train DATA.csv``: a multi-label classifier, one sigmoid unit per label, trained with binary
cross-entropy on a frozen backbone's features (``transfer`` or ``features`` recipe).

The frozen part of the network runs once over every image (`kerascope.training.split`: the
same cut and the same inference engine as the folder trainer's split path), then Keras trains
the head on those outputs. By default without augmentation: a frozen backbone's features of a
fixed picture do not change between epochs, which is what makes this fast. An augmentation
option (``--rotation``, ``--zoom``, ``--augment-policy``, ...: the folder recipes'
`AugmentConfig`, applied by the same host executor, `kerascope.data.affine.random_affine`)
makes every epoch decode, augment and run the training rows through the backbone again;
validation rows are never augmented. The head with the
lowest validation loss is kept (early stopping, best weights restored). Then, on the held-out
rows, each label gets the threshold that maximises its F1 (`kerascope.multilabel_metrics`),
saved in ``multilabel.json`` beside the labels and the split: ``predict`` and
``classify --model RUN`` call a label when its probability reaches its threshold, and
``evaluate`` reports per-label precision / recall / F1 and mAP.

The run directory holds what a folder run holds (``config.yaml``, ``labels.json``,
``history.csv``, ``model.keras``, ``run_state.json``, ``curves.png``, ``report.md`` with a
per-label table of thresholds and AP) plus ``multilabel.json``. A run is
short (one pass of the backbone): it is written at the end and not resumable.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.augment import AugmentConfig
from kerascope.data.folders import DatasetError
from kerascope.data.multilabel import LabelTable, pixels_of, read_label_csv
from kerascope.errors import ConfigError, RunError
from kerascope.files import atomic_path, finite, write_json
from kerascope.multilabel_metrics import multilabel_report, tune_thresholds
from kerascope.output import printable
from kerascope.report import plot_curves, write_history, write_run_report
from kerascope.rundir import LABELS_NAME, lock_run, write_state
from kerascope.training import recipes
from kerascope.training.config_file import save_config
from kerascope.training.settings import resolve_config
from kerascope.zoo.model_archive import model_record, write_record
from kerascope.zoo.sigmoid_heads import MULTILABEL_NAME

RECIPES = ("transfer", "features")
TAKES = ("data", "recipe", "output", "backbone", "epochs", "batch_size", "lr", "seed",
         "val_split", "image_size", "patience", "head", "dropout", "optimizer", "weights",
         "augment", "layer", "pool")  # fmt: skip
"""`train`'s settings a multi-label run takes; the others are refused, not ignored."""


@dataclass
class MultilabelRun:
    """What a multi-label run produced; the files are in ``run_dir``."""

    run_dir: Path
    model_path: Path
    classes: list[str]  # the labels, in output order
    history: list[dict[str, Any]]
    best_epoch: int
    val_loss: float
    val_accuracy: float  # per-label accuracy at 0.5, the Keras metric
    val_map: float  # mean average precision on the validation rows
    thresholds: list[float]
    metrics: dict[str, Any]  # `multilabel_report` on the validation rows
    config: dict[str, Any]
    model: Any = field(default=None, repr=False)


def train_multilabel(
    data: str | os.PathLike,
    recipe: str = "transfer",
    output: str | os.PathLike | None = None,
    backbone: str | list[str] | None = None,
    epochs: int | list[int] | None = None,
    batch_size: int | None = None,
    lr: float | list[float] | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    image_size: int | tuple[int, int] | None = None,
    patience: int | None = None,
    head: str | list[str] | None = None,
    dropout: float | None = None,
    optimizer: str | list[str] | None = None,
    weights: str | os.PathLike | list[str] | None = None,
    progress: bool = True,
    augment: Any = True,
    layer: str | None = None,
    pool: str = "avg",
    refused: list[str] | None = None,
) -> MultilabelRun:
    """Train a sigmoid head on the label CSV ``data`` (see the module doc); `train`'s
    arguments of the same names mean the same, except ``augment``: an `AugmentConfig`
    augments the training rows (the backbone then runs on them every epoch), anything else
    (True: the recipe's default) trains without augmentation, on features computed once. The
    options ``train`` was given that this trainer does not take are refused (``refused``:
    their flags).

    Raises:
        kerascope.data.DatasetError: a bad CSV row (its number named), an unreadable image.
        ConfigError: a recipe other than transfer / features.
        RunError: ``output`` holds a run or other files.
    """
    from kerascope.config import ensure_backend
    from kerascope.training.clock import RunClock

    ensure_backend()
    clock = RunClock()  # report.md's wall time counts from here
    if refused:
        raise ConfigError(f"{', '.join(refused)}: not available for a multi-label CSV (a "
                          "sigmoid head on frozen features); leave "
                          f"{'it' if len(refused) == 1 else 'them'} out")  # fmt: skip
    if recipe not in RECIPES:
        raise ConfigError(f"a multi-label CSV trains a sigmoid head on a frozen backbone: use "
                          f"--recipe transfer or features, not {recipe!r}")  # fmt: skip
    augment = augment if isinstance(augment, AugmentConfig) else False  # asked for: only then
    table = read_label_csv(data)  # every row checked before anything is built
    config = resolve_config(data, recipe, output, backbone, epochs, batch_size, lr, seed,
                            val_split, False, None, None, augment, image_size, patience,
                            layer=layer, pool=pool, head=head, dropout=dropout,
                            optimizer=optimizer, weights=weights,
                            task="multilabel")  # fmt: skip
    splits = table.split(config["val_split"], config["seed"])
    config["classes"] = table.labels
    config["counts"] = {name: {s: int(table.targets[rows, j].sum()) for s, rows in splits.items()}
                        for j, name in enumerate(table.labels)}  # fmt: skip
    _check_label_counts(config["counts"], progress)
    run_dir = Path(config["output"])
    _check_new_output(run_dir)
    with lock_run(run_dir, create=True):
        _check_new_output(run_dir)
        return _train(run_dir, config, table, splits, progress, clock)


def _check_label_counts(counts: dict[str, dict[str, int]], progress: bool) -> None:
    """A label no training row names cannot be learnt (its threshold came out at 5e-05 and it
    was called on a black picture): refused. One no validation row names gets no tuned
    threshold (0.5) nor average precision: said, as the split is a plain shuffle of rows."""
    untrained = [name for name, c in counts.items() if not c["train"]]
    if untrained:
        raise DatasetError(f"label(s) {', '.join(map(repr, untrained))} name no training image "
                           "after the split (all held out for validation): add images that "
                           "have them, or change --seed or --val-split")  # fmt: skip
    unscored = [name for name, c in counts.items() if not c["validation"]]
    if unscored and progress:
        print(
            f"note: label(s) {', '.join(map(repr, unscored))} name no validation image: "
            "their thresholds stay 0.5 and the mAP leaves them out",
            file=sys.stderr,
        )


def _check_new_output(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output '{run_dir}' is a file: choose a folder for the run")
    if run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir()):
        raise RunError(f"output '{run_dir}' exists and is not empty: choose a new or empty "
                       "folder")  # fmt: skip


def _train(run_dir: Path, config: dict, table: LabelTable, splits: dict, progress: bool,
           clock: Any):  # fmt: skip
    import keras

    from kerascope.inference import compiled
    from kerascope.training.epochs import EarlyStop
    from kerascope.training.optimizers import make_optimizer
    from kerascope.training.progress import TrainProgress
    from kerascope.training.split import split_model

    clock.add("checks", time.monotonic() - clock.started)  # the CSV's rows, the settings
    setup = time.monotonic()
    if progress:  # what it trains on, before the first epoch, as a folder run says it
        print(counts_line(table, splits, config["counts"]))
    save_config(run_dir, config)
    write_json(run_dir / LABELS_NAME, {"classes": table.labels})
    write_state(run_dir, {"status": "running"})
    size = tuple(config["image_size"])
    keras.utils.set_random_seed(config["seed"])
    model = recipes.build_model(recipes.get_recipe(config["recipe"]), len(table.labels), size,
                                None, config["seed"], config["backbone"],
                                backbone_weights=config.get("weights") or "imagenet",
                                dropout=config["dropout"], layer=config.get("layer"),
                                pool=config.get("pool", "avg"), head=config.get("head"),
                                task="multilabel", zero_head=True)  # fmt: skip
    parts = split_model(model)
    forward = compiled(parts.prefix)
    batch = config["batch_size"]
    augment = config.get("augment")
    augment = AugmentConfig(**augment) if augment else None
    if augment is not None and augment.is_identity:
        augment = None
    feats, targets = {}, {}
    for name, rows in splits.items():
        if name == "train" and augment is not None:
            continue  # its features change every epoch: computed as the epochs need them
        if progress:
            print(f"  {name}: frozen prefix on {len(rows)} images", flush=True)
        chunks = [forward(pixels_of(table, rows[i:i + batch], size))
                  for i in range(0, len(rows), batch)]  # fmt: skip
        feats[name] = _joined(chunks)
    targets = {name: table.targets[rows] for name, rows in splits.items()}
    stage = config["stages"][0]
    steps = -(-len(splits["train"]) // batch) * stage["epochs"]
    suffix = parts.suffix
    suffix.compile(optimizer=make_optimizer(stage["optimizer"], stage["lr"], stage.get("momentum"),
                                            stage.get("schedule"), steps),
                   loss="binary_crossentropy",
                   metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])  # fmt: skip
    stop = EarlyStop(config["patience"], stage["epochs"], stream=sys.stdout if progress else None,
                     restore_best_weights=True)  # fmt: skip
    began, seconds = [0.0], []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda _e, _logs: began.__setitem__(0, time.perf_counter()),
        on_epoch_end=lambda _e, _logs: seconds.append(time.perf_counter() - began[0]),
    )
    # kerascope's epoch lines, as a folder run's (before: Keras's raw lines off a terminal);
    # Keras's bar only on a terminal, first, so it ends its line before them
    verbose = (1 if sys.stdout.isatty() else 0) if progress else 0
    shown = [TrainProgress(len(splits["train"]), stage["epochs"],
                           cached=augment is None)] if progress else []  # fmt: skip
    if augment is None:
        data = {"x": feats["train"], "y": targets["train"], "batch_size": batch, "shuffle": True}
    else:
        from kerascope.data.affine import random_affine

        data = {"x": _augmented(table, splits["train"], size, batch, forward,
                                random_affine(augment, config["seed"]), config["seed"]),
                "steps_per_epoch": -(-len(splits["train"]) // batch),
                "shuffle": False}  # the generator shuffles, seeded per epoch  # fmt: skip
    bar = [keras.callbacks.ProgbarLogger()] if verbose else []  # ends its line before stop's
    clock.add("setup", time.monotonic() - setup)  # the frozen prefix's pass, compiling
    with clock.part("fit"):
        fit = suffix.fit(**data, epochs=stage["epochs"], verbose=verbose,
                         callbacks=[*bar, timer, clock.epochs_callback(), stop, *shown],
                         validation_data=(feats["validation"], targets["validation"]))  # fmt: skip
    history = [{"epoch": e + 1, "stage": 1, "seconds": seconds[e],
                **{k: float(v[e]) for k, v in fit.history.items()}}
               for e in range(len(fit.history["loss"]))]  # fmt: skip
    best = int(np.argmin([row["val_loss"] for row in history]))
    scores = np.asarray(suffix.predict(feats["validation"], batch_size=batch, verbose=0))
    thresholds = tune_thresholds(targets["validation"], scores)
    metrics = multilabel_report(targets["validation"], scores, table.labels, thresholds)
    saving = time.monotonic()
    saved = recipes.inference_model(model)
    rule = "max F1 per label on the validation rows"
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        saved.save(tmp)  # with its labels inside: a copy of model.keras keeps them
        write_record(tmp, model_record([(str(i), n) for i, n in enumerate(table.labels)],
                     multilabel={"labels": table.labels, "thresholds": thresholds,
                                 "threshold_rule": rule}))  # fmt: skip
    write_history(run_dir / "history.csv", history)
    write_json(run_dir / MULTILABEL_NAME, finite({
        "labels": table.labels, "thresholds": thresholds, "csv": str(table.csv),
        "threshold_rule": rule,
        "splits": {name: table.relative(rows) for name, rows in splits.items()},
        "validation": metrics}))  # fmt: skip
    plot_curves(history, run_dir / "curves.png", "accuracy per label (at 0.5)")
    clock.add("saving", time.monotonic() - saving)
    outcome = {**_outcome(history, best), "clock": clock.summary()}
    notes = [augment_line(augment), "", *label_lines(metrics, config["counts"])]
    write_run_report(run_dir / "report.md", config, data_summary(table, splits), outcome, notes)
    write_state(run_dir, {"status": "done", "completed_stages": 1, "stage": 1,
                          "epoch": len(history), "outcome": outcome})  # fmt: skip
    if progress:
        print(f"validation: mAP {metrics['mAP']:.4f}; thresholds (max F1 per label) "
              f"saved in {run_dir / MULTILABEL_NAME}; report in "
              f"{run_dir / 'report.md'}")  # fmt: skip
    return MultilabelRun(run_dir, run_dir / "model.keras", list(table.labels), history,
                         best + 1, history[best]["val_loss"], history[best]["val_accuracy"],
                         metrics["mAP"], thresholds, metrics, config, saved)  # fmt: skip


def _augmented(table: LabelTable, rows: np.ndarray, size: tuple, batch: int, forward: Any,
               augment: Any, seed: int):  # fmt: skip
    """Endless training batches ``(prefix outputs, targets)``: each epoch the rows in a new
    seeded order, decoded, augmented (batch ``i`` of epoch ``e`` drawn from ``(seed, e, i)``,
    as the folder trainer's) and run through the frozen prefix."""
    epoch = 0
    while True:
        order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        for i in range(0, len(order), batch):
            picked = order[i : i + batch]
            out = forward(augment(pixels_of(table, picked, size), epoch, i // batch))
            x = [np.asarray(o) for o in out] if isinstance(out, list | tuple) else np.asarray(out)
            yield x, table.targets[picked]
        epoch += 1


def _outcome(history: list[dict[str, Any]], best: int) -> dict[str, Any]:
    """The headline numbers of ``report.md`` and ``run_state.json``, as a folder run's."""
    accuracies = [row["val_accuracy"] for row in history]
    return {"best_epoch": best + 1, "val_accuracy": history[best]["val_accuracy"],
            "val_loss": history[best]["val_loss"], "best_val_accuracy": max(accuracies),
            "final_val_accuracy": accuracies[-1], "epochs": len(history),
            "stage_epochs": [len(history)],
            "seconds": float(sum(row["seconds"] for row in history))}  # fmt: skip


def counts_line(table: LabelTable, splits: dict[str, np.ndarray],
                counts: dict[str, dict[str, int]], shown: int = 6) -> str:  # fmt: skip
    """What the run trains on, in one line, as a folder run's (`run_data.counts_line`):
    ``dataset: 4 labels, 96 images; train 72 (astronaut 36, cat 35, ...); validation 24
    (...)``, each label's count the images of the split that name it."""
    parts = []
    for split, rows in splits.items():
        each = ", ".join(f"{printable(name)} {c[split]}" for name, c in
                         list(counts.items())[:shown])  # fmt: skip
        more = ", ..." if len(counts) > shown else ""
        parts.append(f"{split} {len(rows)} ({each}{more})")
    return (f"dataset: {len(table.labels)} labels, {len(table)} images; "
            + "; ".join(parts))  # fmt: skip


def data_summary(table: LabelTable, splits: dict[str, np.ndarray]) -> str:
    """The report's data table: pictures naming each label per split, then the pictures."""
    names = [printable(n) for n in table.labels]
    width = max([6, *(len(n) for n in names)])
    lines = [f"{printable(str(table.csv))} (multi-label CSV, {len(names)} labels, "
             f"{len(table)} images)",
             "  ".join([f"{'label':<{width}}", *(f"{s:>10}" for s in splits)])]  # fmt: skip
    for j, name in enumerate(names):
        counts = (int(table.targets[rows, j].sum()) for rows in splits.values())
        lines.append("  ".join([f"{name:<{width}}", *(f"{c:>10}" for c in counts)]))
    lines.append("  ".join([f"{'images':<{width}}", *(f"{len(r):>10}" for r in splits.values())]))
    return "\n".join(lines)


def augment_line(augment: AugmentConfig | None) -> str:
    """What the report says about augmentation (a multi-label run has none unless asked)."""
    if augment is None:
        return ("No augmentation: the backbone ran once over every picture (an augmentation "
                "option such as `--zoom 0.2` augments the training rows every epoch).")  # fmt: skip
    a = augment
    parts = [f"rotation {a.rotation:g}°", f"shift {a.width_shift:g} x {a.height_shift:g}",
             f"shear {a.shear:g}", f"zoom {a.zoom:g}"]  # fmt: skip
    parts += ["horizontal flips"] if augment.horizontal_flip else []
    parts += ["vertical flips"] if augment.vertical_flip else []
    parts += [f"{augment.policy} policy"] if augment.policy else []
    return (
        f"Augmentation of the training rows, new every epoch: {', '.join(parts)} (fill "
        f"{augment.fill_mode}); validation rows as they are."
    )


def label_lines(metrics: dict[str, Any], counts: dict[str, dict[str, int]]) -> list[str]:
    """``report.md``'s per-label section: each label's threshold (max F1 on validation) and
    its scores there, then mAP."""
    lines = ["## Labels", "",
             f"On the {metrics['n']} validation images, a label is called when its probability "
             "reaches its threshold (the one with the best F1 there; saved in "
             f"`{MULTILABEL_NAME}`, used by predict, classify and serve).", "",
             "| label | train images | validation images | threshold | AP | precision | "
             "recall | F1 |", "|---|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for row in metrics["labels"]:
        seen = counts.get(row["label"], {})
        name = printable(row["label"]).replace("|", "\\|")
        lines.append(
            f"| {name} | {seen.get('train', 0)} | {seen.get('validation', 0)} | "
            f"{row['threshold']:.3f} | {row['average_precision']:.3f} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} |"
        )
    lines += ["", f"mAP **{metrics['mAP']:.4f}**, macro F1 {metrics['macro_f1']:.4f}, exact "
              f"label sets {100 * metrics['subset_accuracy']:.1f} %.", ""]  # fmt: skip
    return lines


def _joined(chunks: list) -> Any:
    """Batches of prefix outputs as one array (or one per boundary tensor)."""
    if isinstance(chunks[0], list | tuple):
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    return np.concatenate(chunks)
