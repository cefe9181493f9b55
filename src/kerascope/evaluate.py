"""How good is a trained model, and on which images is it wrong? Plus Kaggle-style predictions.

``evaluate`` runs a run directory's model over labelled class folders and writes
``metrics.json`` (accuracy, per-class precision / recall / F1, confusion matrix),
``confusion.png`` and ``top_losses.png`` (the images the model is most confidently wrong
about, the quickest way to find mislabelled data). ``predict`` writes one CSV row per image.
Both run through ``kerascope.predict.classify_sources``, the path every classifier takes,
so an evaluated model behaves exactly as it will in ``classify``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.folders import SPLIT_DIRS, DatasetError
from kerascope.images import expand_inputs, load_image, resize
from kerascope.output import csv_safe
from kerascope.predict import MISSING_INPUT, classify_sources, normalise_inputs
from kerascope.report import plot_confusion, plot_gallery
from kerascope.zoo.models import Classifier, load_model

TOP_LOSSES = 12


def evaluation_items(data: str | os.PathLike, classes: list[str]) -> tuple[str, list]:
    """``(split used, [(path, label)])`` for ``data``: its ``test/`` split, else its
    ``validation/`` split, else ``data/<class>/`` itself (every image).

    Raises:
        DatasetError: no class folders, or a folder that is not one of the model's classes.
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DatasetError(f"evaluation folder '{root}' does not exist")
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split, where = "all", root
    for name in ("test", "validation"):
        hit = next((folders[n] for n in SPLIT_DIRS[name] if n in folders), None)
        if hit is not None:
            split, where = name, hit
            break
    class_dirs = sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"no class folders in '{where}': put each class's images in a folder "
                           f"named after the class ({', '.join(classes[:5])})")  # fmt: skip
    items = []
    for folder in class_dirs:
        if folder.name not in classes:
            raise DatasetError(f"'{folder}' is not a class of this model (its classes: "
                               f"{', '.join(classes)}); rename or remove it")  # fmt: skip
        label = classes.index(folder.name)
        items += [(p, label) for p in expand_inputs([folder]).paths]
    if not items:
        raise DatasetError(f"no images in the class folders of '{where}'")
    return split, items


def metrics_from(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support and the confusion matrix.

    ``confusion[i][j]`` counts images of true class i predicted as j. A class never
    predicted has precision 0 (not NaN) so that macro averages stay defined.
    """
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    tp = np.diag(confusion).astype(float)
    predicted_n, true_n = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted_n, out=np.zeros(k), where=predicted_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    n = int(confusion.sum())
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
            "support": int(true_n[i])}
        for i, c in enumerate(classes)
    }  # fmt: skip
    present = true_n > 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": per_class,
        "classes": list(classes),
        "confusion": confusion.tolist(),
    }


def evaluate(
    run_dir: str | os.PathLike | Classifier,
    data: str | os.PathLike,
    batch_size: int = 32,
    output: str | os.PathLike | None = None,
    top_losses: int = TOP_LOSSES,
    heatmaps: bool = True,
) -> dict[str, Any]:
    """Score a trained model on labelled class folders and write the evaluation files.

    Args:
        run_dir: a run directory or ``.keras`` file (or a loaded `Classifier`).
        data: a folder with ``test/`` or ``validation/`` class folders, or class folders.
        batch_size: images per forward pass.
        output: where ``metrics.json``, ``confusion.png`` and ``top_losses.png`` go;
            default the run directory.
        top_losses: how many of the worst-scored images to show (0: no gallery).
        heatmaps: overlay what the model looked at on the gallery, when the explain
            module is installed.

    Returns:
        The metrics (also in ``metrics.json``): ``accuracy``, ``per_class``, ``confusion``,
        ``n`` (images scored), ``unreadable`` (``[path, reason]`` left out), ``split``.

    Example:
        >>> m = evaluate("runs/cats", "data/cats_dogs")  # doctest: +SKIP
        >>> print(format_confusion(m))  # doctest: +SKIP
    """
    clf = run_dir if isinstance(run_dir, Classifier) else load_model(run_dir)
    classes = [name for _, name in clf.labels]
    split, items = evaluation_items(data, classes)
    results = classify_sources(clf, [p for p, _ in items], top=len(classes),
                               batch_size=batch_size)  # fmt: skip
    kept, probs, unreadable = [], [], []
    for (path, label), result in zip(items, results, strict=True):
        if not result.ok:
            unreadable.append([path, result.error])
            continue
        row = np.zeros(len(classes), dtype=np.float32)
        for p in result.predictions:
            row[p.index] = p.probability
        kept.append((path, label))
        probs.append(row)
    if not kept:
        raise DatasetError(f"none of the {len(items)} images in '{data}' could be read")
    probs_ = np.stack(probs)
    labels = np.array([label for _, label in kept])
    metrics = metrics_from(labels, probs_.argmax(axis=1), classes)
    metrics.update(data=str(Path(data).resolve()), split=split, unreadable=unreadable,
                   model=str(clf.source))  # fmt: skip
    out = Path(output) if output is not None else _default_output(run_dir, clf)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_confusion(np.array(metrics["confusion"]), classes, out / "confusion.png")
    if top_losses:
        _top_losses(clf, kept, probs_, labels, out / "top_losses.png", top_losses, heatmaps)
    return metrics


def _default_output(run_dir: Any, clf: Classifier) -> Path:
    if isinstance(run_dir, Classifier):
        return Path(clf.source).parent
    path = Path(run_dir)
    return path if path.is_dir() else path.parent


def _top_losses(clf, kept, probs, labels, path: Path, count: int, heatmaps: bool) -> Path:
    """Gallery of the highest cross-entropy images: true class, prediction, probability."""
    true_p = probs[np.arange(len(labels)), labels]
    order = np.argsort(true_p, kind="stable")[:count]  # lowest p(true) = highest loss
    pixels = np.stack([resize(load_image(kept[i][0]), clf.input_size) for i in order])
    predicted = probs[order].argmax(axis=1)
    if heatmaps:
        pixels = _with_heatmaps(clf, pixels, predicted)
    names = [name for _, name in clf.labels]
    titles = [
        f"{'/'.join(Path(kept[i][0]).parts[-2:])}\ntrue {names[labels[i]]} / pred {names[p]} "
        f"{probs[i, p]:.2f}\nloss {-np.log(max(true_p[i], 1e-12)):.2f}"
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


def format_confusion(metrics: dict[str, Any]) -> str:
    """The confusion matrix and per-class scores as a plain-text table (for the CLI)."""
    classes = metrics["classes"]
    width = max(8, *(len(c) for c in classes))
    corner = "true \\ pred"
    head = f"{corner:<{width}}  " + "  ".join(f"{c[:width]:>{width}}" for c in classes)
    lines = [head]
    for c, row in zip(classes, metrics["confusion"], strict=True):
        lines.append(f"{c:<{width}}  " + "  ".join(f"{v:>{width}}" for v in row))
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for c in classes:
        s = metrics["per_class"][c]
        lines.append(f"{c:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}"
                     f"  {s['support']:7d}")  # fmt: skip
    lines.append(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} images")
    if metrics.get("unreadable"):
        lines.append(f"{len(metrics['unreadable'])} unreadable image(s) left out")
    return "\n".join(lines)


def predict(
    run_dir: str | os.PathLike | Classifier,
    inputs: str | os.PathLike | list,
    output_csv: str | os.PathLike,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Label every image under ``inputs`` and write ``path,label,probability,error`` rows.

    This is the Kaggle-submission shape of the tutorials (one row per test image). A file
    that cannot be read gets a row with its ``error`` and empty label instead of vanishing,
    so the row count always matches the files given.

    Returns:
        The rows written, in input order.
    """
    clf = run_dir if isinstance(run_dir, Classifier) else load_model(run_dir)
    sources, _, missing = normalise_inputs(inputs if isinstance(inputs, list) else [inputs])
    rows = [{"path": m, "label": "", "probability": "", "error": MISSING_INPUT}
            for m in missing]  # fmt: skip
    for r in classify_sources(clf, sources, top=1, batch_size=batch_size):
        if r.ok:
            top = r.predictions[0]
            rows.append({"path": r.source, "label": top.name,
                         "probability": round(top.probability, 6), "error": ""})  # fmt: skip
        else:
            rows.append({"path": r.source, "label": "", "probability": "", "error": r.error})
    path = Path(output_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "probability", "error"])
        writer.writeheader()
        writer.writerows(csv_safe(row) for row in rows)
    return rows
