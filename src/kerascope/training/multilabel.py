"""``train DATA.csv``: a multi-label classifier, one sigmoid unit per label, trained with binary
cross-entropy on a frozen backbone's features (``transfer`` or ``features`` recipe).

The frozen part of the network runs once over every image (`kerascope.training.split`: the
same cut and the same inference engine as the folder trainer's split path), then Keras trains
the head on those outputs. Without augmentation: a frozen backbone's features of a fixed
picture do not change between epochs, which is what makes this fast. The head with the
lowest validation loss is kept (early stopping, best weights restored). Then, on the held-out
rows, each label gets the threshold that maximises its F1 (`kerascope.multilabel_metrics`),
saved in ``multilabel.json`` beside the labels and the split: ``predict`` and
``classify --model RUN`` call a label when its probability reaches its threshold, and
``evaluate`` reports per-label precision / recall / F1 and mAP.

The run directory holds what a folder run holds (``config.yaml``, ``labels.json``,
``history.csv``, ``model.keras``, ``run_state.json``) plus ``multilabel.json``. A run is
short (one pass of the backbone): it is written at the end and not resumable.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.multilabel import LabelTable, pixels_of, read_label_csv
from kerascope.errors import ConfigError, RunError
from kerascope.files import atomic_path, write_json
from kerascope.multilabel_metrics import multilabel_report, tune_thresholds
from kerascope.report import write_history
from kerascope.rundir import LABELS_NAME, lock_run, write_state
from kerascope.training import recipes
from kerascope.training.settings import resolve_config, save_config
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
    arguments of the same names mean the same. ``augment`` is not used (the features are
    computed once); an explicit augmentation config is refused, and so are the options
    ``train`` was given that this trainer does not take (``refused``: their flags).

    Raises:
        kerascope.data.DatasetError: a bad CSV row (its number named), an unreadable image.
        ConfigError: a recipe other than transfer / features, or an augmentation asked for.
        RunError: ``output`` holds a run or other files.
    """
    from kerascope.config import ensure_backend

    ensure_backend()
    if refused:
        raise ConfigError(f"{', '.join(refused)}: not available for a multi-label CSV (a "
                          "sigmoid head on frozen features); leave "
                          f"{'it' if len(refused) == 1 else 'them'} out")  # fmt: skip
    if recipe not in RECIPES:
        raise ConfigError(f"a multi-label CSV trains a sigmoid head on a frozen backbone: use "
                          f"--recipe transfer or features, not {recipe!r}")  # fmt: skip
    if augment not in (True, False, None):
        raise ConfigError("a multi-label CSV trains on the frozen backbone's features, "
                          "computed once: leave out the augmentation options")  # fmt: skip
    table = read_label_csv(data)  # every row checked before anything is built
    config = resolve_config(data, recipe, output, backbone, epochs, batch_size, lr, seed,
                            val_split, False, None, None, False, image_size, patience,
                            layer=layer, pool=pool, head=head, dropout=dropout,
                            optimizer=optimizer, weights=weights,
                            task="multilabel")  # fmt: skip
    splits = table.split(config["val_split"], config["seed"])
    config["classes"] = table.labels
    config["counts"] = {name: {s: int(table.targets[rows, j].sum()) for s, rows in splits.items()}
                        for j, name in enumerate(table.labels)}  # fmt: skip
    run_dir = Path(config["output"])
    _check_new_output(run_dir)
    with lock_run(run_dir, create=True):
        _check_new_output(run_dir)
        return _train(run_dir, config, table, splits, progress)


def _check_new_output(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output '{run_dir}' is a file: choose a folder for the run")
    if run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir()):
        raise RunError(f"output '{run_dir}' exists and is not empty: choose a new or empty "
                       "folder")  # fmt: skip


def _train(run_dir: Path, config: dict, table: LabelTable, splits: dict, progress: bool):
    import keras

    from kerascope.inference import compiled
    from kerascope.training.optimizers import make_optimizer
    from kerascope.training.split import split_model

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
                                task="multilabel")  # fmt: skip
    parts = split_model(model)
    forward = compiled(parts.prefix)
    batch = config["batch_size"]
    feats, targets = {}, {}
    for name, rows in splits.items():
        if progress:
            print(f"  {name}: frozen prefix on {len(rows)} images", flush=True)
        chunks = [forward(pixels_of(table, rows[i:i + batch], size))
                  for i in range(0, len(rows), batch)]  # fmt: skip
        feats[name] = _joined(chunks)
        targets[name] = table.targets[rows]
    stage = config["stages"][0]
    steps = -(-len(splits["train"]) // batch) * stage["epochs"]
    suffix = parts.suffix
    suffix.compile(optimizer=make_optimizer(stage["optimizer"], stage["lr"], stage.get("momentum"),
                                            stage.get("schedule"), steps),
                   loss="binary_crossentropy",
                   metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])  # fmt: skip
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["patience"],
                                         restore_best_weights=True)  # fmt: skip
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    fit = suffix.fit(feats["train"], targets["train"], batch_size=batch, epochs=stage["epochs"],
                     validation_data=(feats["validation"], targets["validation"]),
                     shuffle=True, callbacks=[stop], verbose=verbose)  # fmt: skip
    history = [{"epoch": e + 1, "stage": 1, **{k: float(v[e]) for k, v in fit.history.items()}}
               for e in range(len(fit.history["loss"]))]  # fmt: skip
    best = int(np.argmin([row["val_loss"] for row in history]))
    scores = np.asarray(suffix.predict(feats["validation"], batch_size=batch, verbose=0))
    thresholds = tune_thresholds(targets["validation"], scores)
    metrics = multilabel_report(targets["validation"], scores, table.labels, thresholds)
    saved = recipes.inference_model(model)
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        saved.save(tmp)
    write_history(run_dir / "history.csv", history)
    write_json(run_dir / MULTILABEL_NAME, {
        "labels": table.labels, "thresholds": thresholds, "csv": str(table.csv),
        "threshold_rule": "max F1 per label on the validation rows",
        "splits": {name: table.relative(rows) for name, rows in splits.items()},
        "validation": metrics})  # fmt: skip
    write_state(run_dir, {"status": "done", "completed_stages": 1, "stage": 1,
                          "epoch": len(history)})  # fmt: skip
    if progress:
        print(f"validation: mAP {metrics['mAP']:.4f}; thresholds (max F1 per label) "
              f"saved in {run_dir / MULTILABEL_NAME}")  # fmt: skip
    return MultilabelRun(run_dir, run_dir / "model.keras", list(table.labels), history,
                         best + 1, history[best]["val_loss"], history[best]["val_accuracy"],
                         metrics["mAP"], thresholds, metrics, config, saved)  # fmt: skip


def _joined(chunks: list) -> Any:
    """Batches of prefix outputs as one array (or one per boundary tensor)."""
    if isinstance(chunks[0], list | tuple):
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    return np.concatenate(chunks)
