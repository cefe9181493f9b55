"""How good is a trained model, and on which images is it wrong?

``evaluate`` runs a model over labelled images (class folders, or any inputs with their labels)
and writes ``metrics.json`` (accuracy, per-class precision / recall / F1, confusion matrix),
``confusion.png`` and ``top_losses.png`` (the images the model is most confidently wrong about,
the quickest way to find mislabelled data) and ``predictions.png`` (a labelled grid of random
scored images). `kerascope.validation.validate` scores any labelled folder (zoo models included)
through the same `score_items`. It runs through
``kerascope.classification.iter_outputs``, the path every classifier takes, so an
evaluated model behaves exactly as it will in ``classify``. Kaggle-style CSV predictions are
``kerascope.prediction``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.batch_sizes import whole_number
from kerascope.classification import Source, iter_outputs, run_precision
from kerascope.data.folders import DatasetError
from kerascope.errors import ConfigError
from kerascope.eval_plots import plot_most_confused, plot_predictions
from kerascope.evaluation_data import (  # noqa: F401  (re-exported: evaluate's choices)
    SPLITS,
    evaluation_items,
    items_and_default,
)
from kerascope.evaluation_text import (  # noqa: F401  (re-exported: the CLI's text)
    MATRIX_CLASSES,
    format_confusion,
    headline,
    top5_note,
)
from kerascope.files import check_output_folder, fresh_path, make_output_folder, write_json
from kerascope.inference import compiled
from kerascope.metrics import (  # noqa: F401  (metrics_from, top_k_accuracy: re-exported)
    metrics_from,
    most_confused,
    top_k_accuracy,
    wilson_interval,
)
from kerascope.output import percent
from kerascope.report import plot_confusion, plot_gallery
from kerascope.rundir import read_labels, read_split, trained_count
from kerascope.sources import MISSING_INPUT, iter_batches, normalise_inputs
from kerascope.tta import TTA, as_tta, iter_tta_outputs
from kerascope.zoo.models import Classifier, run_folder
from kerascope.zoo.shared import shared_model

TOP_LOSSES = 12
GRID = 16
"""Images in ``predictions.png`` (a 4x4 grid, as the tutorials' "cat 97%" picture)."""


@dataclass
class ClassScores:
    """Precision, recall and F1 of one class, and how many images truly belong to it."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Evaluation:
    """What `evaluate` measured; `to_dict` is the content of ``metrics.json``.

    Attributes:
        n: images scored (unreadable ones left out).
        accuracy: share of the ``n`` images whose top-1 class is the true one.
        top5_accuracy: share whose true class is among the 5 most probable; None with 5
            classes or fewer (where it would always be 1).
        macro_f1: mean F1 over the classes that have images.
        per_class: `ClassScores` by class name.
        classes: class names, in the model's output order.
        confusion: ``confusion[i][j]`` counts images of true class i predicted as j.
        data: the evaluated folder (absolute), or None for other inputs.
        split: ``test``, ``validation``, ``train`` or ``all``, or ``labels`` (labels given).
        split_source: ``run`` when the images are the ones the run itself put in ``split``
            (its ``split.json``), ``folder`` when they are the folder's own split folder.
        trained_on: how many scored images the run trained on (0 unless the run recorded
            its files): above 0 the accuracy overstates how the model does on new images.
        unreadable: ``(source, reason)`` of each input left out.
        model: where the model came from.
        precision: what the model computed in (float32, bfloat16, float16).
        output: the folder holding ``metrics.json`` and the plots.
        top1_interval: 95 % Wilson score interval of ``accuracy`` (`wilson_interval`).
        top5_interval: the same for ``top5_accuracy`` (None when that is None).
        most_confused: ``(true, predicted, count)`` of the most frequent mistakes, most first.
        images_per_second: images scored per second, decoding included, the model's one-time
            conversion not (TTA views count once).
        tta: the `kerascope.tta.TTA` settings used (``views``, ``flip``, ``crops``), or None.
    """

    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    classes: list[str]
    confusion: list[list[int]]
    data: str | None = None
    split: str = "all"
    split_source: str = "folder"
    trained_on: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    output: Path | None = None
    top5_accuracy: float | None = None
    precision: str = "float32"
    top1_interval: tuple[float, float] = (float("nan"), float("nan"))
    top5_interval: tuple[float, float] | None = None
    most_confused: list[tuple[str, str, int]] = field(default_factory=list)
    images_per_second: float = float("nan")
    tta: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The metrics as plain JSON data (without ``output``), as in ``metrics.json``; above
        `MATRIX_CLASSES` classes the confusion matrix as its non-zero ``[true, pred, n]``."""
        small = len(self.classes) <= MATRIX_CLASSES
        nonzero = [] if small else [[i, j, v] for i, row in enumerate(self.confusion)
                                    for j, v in enumerate(row) if v]  # fmt: skip
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "top5_accuracy": self.top5_accuracy,
            "macro_f1": self.macro_f1,
            "per_class": {c: vars(s).copy() for c, s in self.per_class.items()},
            "classes": list(self.classes),
            "confusion": [list(row) for row in self.confusion] if small else None,
            "data": self.data,
            "split": self.split,
            "split_source": self.split_source,
            "trained_on": self.trained_on,
            "unreadable": [[source, reason] for source, reason in self.unreadable],
            "model": self.model,
            "precision": self.precision,
            "top1_interval": list(self.top1_interval),
            "top5_interval": None if self.top5_interval is None else list(self.top5_interval),
            "confusion_nonzero": None if small else nonzero,
            "most_confused": [list(pair) for pair in self.most_confused],
            "images_per_second": self.images_per_second,
            "tta": self.tta,
        }


def evaluate(
    run_dir: str | os.PathLike | Classifier,
    data: Source | Iterable[Source],
    labels: Sequence[str | int] | None = None,
    *,
    batch_size: int = 32,
    output: str | os.PathLike | None = None,
    top_losses: int = TOP_LOSSES,
    heatmaps: bool = True,
    split: str = "auto",
    precision: str | None = None,
    tta: TTA | None = None,
) -> Evaluation:
    """Score a trained model on labelled images and write the evaluation files.

    Args:
        run_dir: a run directory or ``.keras`` file (or a loaded `Classifier`).
        data: without ``labels``, a folder with ``test/`` or ``validation/`` class folders,
            or class folders. With ``labels``, any inputs ``classify`` takes: paths, folders,
            globs, (H, W, 3) arrays or PIL Images.
        labels: the true class of each image in ``data`` (name or index), in the order
            folders and globs expand to.
        batch_size: images per forward pass.
        output: where ``metrics.json``, ``confusion.png``, ``top_losses.png`` and
            ``predictions.png`` go; default the run directory for the data the run trained
            from, else a new ``evaluations/<data folder>`` inside it.
        top_losses: how many of the worst-scored images to show (0: no gallery).
        heatmaps: overlay what the model looked at on the gallery, when the explain
            module is installed.
        split: which images of the folder ``data`` to score (`SPLITS`): ``auto`` takes
            its ``test/`` folder, else, when ``data`` is the folder the run trained from, the
            images the run held out for validation, else its ``validation/`` folder, else
            every image; ``all`` every image, train ones included.
        precision: what the model computes in (auto, float32, bfloat16, float16; see
            `kerascope.classification.run_precision`); ``metrics.json`` records it.
        tta: average the probabilities over these views (`kerascope.tta.TTA`); recorded in
            ``metrics.json``.

    Returns:
        An `Evaluation`; unreadable images are left out and listed in ``unreadable``. A
        multi-label run (``train DATA.csv``) gives a
        `kerascope.multilabel_eval.MultilabelEvaluation` of the label CSV ``data`` instead.

    Raises:
        DatasetError: no class folders, a folder that is not a class of the model, a missing
            input, or nothing readable.
        ValueError: ``labels`` that do not match the images or name an unknown class.

    Example:
        >>> result = kerascope.evaluate("runs/cats", "data/cats_dogs")  # doctest: +SKIP
        >>> result.accuracy, result.per_class["cat"].recall  # doctest: +SKIP
        (0.94, 0.96)
    """
    if output is not None:
        check_output_folder(output)  # before the work, not after it
    folder = _run_folder(run_dir)
    if folder is not None:
        read_labels(folder)  # a damaged labels.json: one line, before the model loads
    record = read_split(folder) if folder is not None else None
    clf = (
        run_dir if isinstance(run_dir, Classifier) else shared_model(run_dir)
    )  # compiled once a process
    if clf.extra.get("multilabel"):  # per-label scores on a label CSV
        from kerascope.multilabel_eval import evaluate_multilabel

        if labels is not None:
            raise ConfigError("a multi-label run is evaluated on a label CSV (path,labels "
                              "rows), not with labels=")  # fmt: skip
        return evaluate_multilabel(clf, data, split=split, output=output,  # type: ignore
                                   batch_size=batch_size, precision=precision, tta=tta)  # fmt: skip
    classes = [name for _, name in clf.labels]
    origin = "folder"
    ids = [cid for cid, _ in clf.labels]
    default = None
    if labels is None:
        split, items, origin, default = items_and_default(data, classes, split, record, ids)
    else:
        split, items = "labels", _labelled_items(data, labels, classes)
    recorded = record is not None and labels is None
    own = origin == "run" or (
        recorded and Path(data).expanduser().resolve() == Path(record["data"])
    )
    # The run's own metrics.json is its default held-out split, without TTA: another split
    # (the training images above all) or TTA goes to evaluations/<data>-<split>[-tta]
    main = own and split not in ("train", "all") and tta is None and split == default
    suffix = "" if main or not own else f"-{split}" + ("-tta" if tta is not None else "")
    out = Path(output) if output is not None else _default_output(
        run_dir, clf, data, main, suffix)  # fmt: skip
    return score_items(
        clf, items, out, data=data, split=split, split_source=origin, record=record,
        batch_size=batch_size, top_losses=top_losses, heatmaps=heatmaps, precision=precision,
        tta=tta,
    )  # fmt: skip


def score_items(
    clf: Classifier,
    items: list,
    output: Path,
    *,
    data: Any = None,
    split: str = "all",
    split_source: str = "folder",
    record: dict | None = None,
    batch_size: int = 32,
    top_losses: int = TOP_LOSSES,
    heatmaps: bool = True,
    precision: str | None = None,
    tta: TTA | None = None,
    grid: int = GRID,
    seed: int = 0,
) -> Evaluation:
    """Score ``items`` (``[(source, class index)]``) and write the evaluation files into
    ``output``: the one implementation behind `evaluate` and `kerascope.validation.validate`.

    ``tta``: average the probabilities over its views (`kerascope.tta`); ``grid``: images in
    ``predictions.png`` (0: none), drawn at random (``seed``) among the scored ones.
    """
    tta = as_tta(tta)
    top_losses, grid = whole_number("top_losses", top_losses, 0), whole_number("grid", grid, 0)
    classes = [name for _, name in clf.labels]
    names = _names([source for source, _ in items])
    kept, probs, unreadable = [], [], []
    position = 0
    sources = [source for source, _ in items]
    if tta is None:
        outputs = iter_outputs(clf, sources, batch_size, precision=precision)
    else:
        outputs = iter_tta_outputs(clf, sources, tta, batch_size, precision)
    compiled(clf.model, precision=run_precision(clf, precision))  # built once, cached: not timed
    start = time.perf_counter()
    for batch, rows in outputs:
        for error, row in zip(batch.errors, range(batch.n), strict=True):
            (source, label), name = items[position], names[position]
            position += 1
            if error is not None:
                unreadable.append((name, error))
                continue
            kept.append((source, name, label))
            probs.append(rows[row])
    seconds = time.perf_counter() - start
    if not kept:
        where = f" in '{data}'" if isinstance(data, str | os.PathLike) else ""
        raise DatasetError(f"none of the {len(items)} images{where} could be read")
    probs_ = np.stack(probs)
    truth = np.array([label for _, _, label in kept])
    m = metrics_from(truth, probs_.argmax(axis=1), classes)
    top5 = top_k_accuracy(probs_, truth, 5) if len(classes) > 5 else None
    result = Evaluation(
        n=m["n"], accuracy=m["accuracy"], macro_f1=m["macro_f1"],
        per_class={c: ClassScores(**v) for c, v in m["per_class"].items()},
        classes=m["classes"], confusion=m["confusion"],
        data=str(Path(data).resolve()) if isinstance(data, str | os.PathLike) else None,
        split=split, split_source=split_source, unreadable=unreadable, model=str(clf.source),
        output=output, trained_on=trained_count(record, [s for s, _, _ in kept]),
        top5_accuracy=top5, precision=run_precision(clf, precision),
        top1_interval=wilson_interval(round(m["accuracy"] * m["n"]), m["n"]),
        top5_interval=None if top5 is None else wilson_interval(round(top5 * m["n"]), m["n"]),
        most_confused=most_confused(np.array(m["confusion"]), classes),
        images_per_second=len(items) / seconds if seconds > 0 else float("nan"),
        tta=None if tta is None else tta.to_dict(),
    )  # fmt: skip
    make_output_folder(output)
    write_json(output / "metrics.json", result.to_dict())
    if len(classes) <= MATRIX_CLASSES:
        plot_confusion(np.array(result.confusion), classes, output / "confusion.png")
    else:
        plot_most_confused(result.most_confused, m["n"], output / "confusion.png")
    if top_losses:
        _top_losses(clf, kept, probs_, truth, output / "top_losses.png", top_losses, heatmaps)
    if grid:
        _predictions_grid(clf, kept, probs_, truth, output / "predictions.png", grid, seed)
    return result


def _predictions_grid(clf, kept, probs, labels, path: Path, count: int, seed: int) -> Path:
    """``predictions.png``: ``count`` random scored images with their predicted class."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(kept), size=min(count, len(kept)), replace=False))
    batch = next(iter_batches([kept[i][0] for i in chosen], clf.input_size, len(chosen),
                              convention=clf.convention))  # as the model saw them  # fmt: skip
    names = [name for _, name in clf.labels]
    predicted = probs[chosen].argmax(axis=1)
    return plot_predictions(
        [it.pixels for it in batch],
        [names[p] for p in predicted],
        [float(probs[i, p]) for i, p in zip(chosen, predicted, strict=True)],
        [names[labels[i]] for i in chosen],
        path,
    )


def _labelled_items(data, labels: Sequence[str | int], classes: list[str]) -> list:
    """``[(source, class index)]`` for inputs given with their labels."""
    sources, _, missing = normalise_inputs(data)
    if missing:
        raise DatasetError(f"'{missing[0]}': {MISSING_INPUT}")
    labels = [labels] if isinstance(labels, str | int) else list(labels)  # "tabby": one label
    if len(labels) != len(sources):
        raise ValueError(f"{len(labels)} labels given for {len(sources)} images")
    if not sources:
        raise DatasetError("no images to evaluate")
    return [(s, _class_index(label, classes)) for s, label in zip(sources, labels, strict=True)]


def _class_index(label: str | int, classes: list[str]) -> int:
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    if isinstance(label, int | np.integer) or (isinstance(label, str) and label.isdigit()):
        index = int(label)
        if 0 <= index < len(classes):
            return index
    raise ValueError(f"label {label!r} is not a class of this model: {', '.join(classes)}")


def _names(sources: list) -> list[str]:
    """Paths as they are; in-memory images as ``<image i>`` (their position in the inputs)."""
    return [os.fspath(s) if isinstance(s, str | os.PathLike) else f"<image {i}>"
            for i, s in enumerate(sources)]  # fmt: skip


def _run_folder(run_dir: Any) -> Path | None:
    """The run directory of a run directory or of a ``.keras`` file inside one."""
    return None if isinstance(run_dir, Classifier) else run_folder(run_dir)


def _default_output(
    run_dir: Any, clf: Classifier, data: Any = None, own: bool = True, suffix: str = ""
) -> Path:
    """The run's folder when scoring the data it trained from (its own evaluation), else a new
    ``evaluations/<data><suffix>`` folder inside it: another folder's results never replace
    the run's own ``metrics.json`` and pictures, nor an earlier evaluation's (``<data>-1``)."""
    if isinstance(run_dir, Classifier):
        folder = Path(clf.source).parent
    else:
        path = Path(run_dir)
        folder = path if path.is_dir() else path.parent
    if own:
        return folder
    name = Path(data).expanduser().resolve().name if isinstance(data, str | os.PathLike) else ""
    return fresh_path(folder / "evaluations" / ((name or "images") + suffix))


def _top_losses(clf, kept, probs, labels, path: Path, count: int, heatmaps: bool) -> Path:
    """Gallery of the highest cross-entropy images: true class, prediction, probability."""
    true_p = probs[np.arange(len(labels)), labels]
    order = np.argsort(true_p, kind="stable")[:count]  # lowest p(true) = highest loss
    batch = next(iter_batches([kept[i][0] for i in order], clf.input_size, max(1, len(order)),
                              convention=clf.convention))  # as the model saw them  # fmt: skip
    pixels = np.stack([it.pixels for it in batch])
    predicted = probs[order].argmax(axis=1)
    if heatmaps:
        pixels = _with_heatmaps(clf, pixels, predicted)
    names = [name for _, name in clf.labels]
    titles = [
        f"{'/'.join(Path(kept[i][1]).parts[-2:])}\ntrue {names[labels[i]]} / pred {names[p]} "
        f"{percent(probs[i, p])}\nloss {-np.log(max(true_p[i], 1e-12)):.2f}"
        for i, p in zip(order, predicted, strict=True)
    ]
    return plot_gallery(list(pixels), titles, path)


def _with_heatmaps(clf: Classifier, pixels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Overlay the explain module's heatmap for the predicted class, if that module exists."""
    try:
        from kerascope.cam.explain import Explainer
        from kerascope.cam.overlay import overlay
    except ImportError:
        return pixels
    maps, _, _ = Explainer(clf, "gradcam").explain_batch(pixels, targets)
    return np.stack([overlay(image, heat) for image, heat in zip(pixels, maps, strict=True)])
