"""How good is any model (zoo, run, ``.keras``) on a labelled folder: ``kerascope validate``.

The counterpart of timm's ``validate.py`` and ``yolo val``. The folder holds one sub-folder per
class, named either by the class's WordNet id (ImageNet layout: ``n02123045/``) or by its name
as the model labels it (``tabby/``; case, spaces, ``-`` and ``_`` do not matter). A folder that
matches no class stops the job before any image is decoded, with every such folder named.
Scoring and the files written are `kerascope.evaluation.score_items`, the one implementation
behind ``evaluate`` too.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerascope.evaluation import GRID, TOP_LOSSES, Evaluation, score_items
from kerascope.files import check_output_folder, fresh_path
from kerascope.labelled_folders import folder_items
from kerascope.rundir import read_labels, read_split
from kerascope.tta import TTA
from kerascope.zoo.models import Classifier, load_model, run_folder


def default_output(model: str | os.PathLike | Classifier) -> Path:
    """``validate-<model>`` in the current folder, or ``validate-<model>-1`` ... when that
    exists: a default name never replaces what is there (only a named ``-o`` folder's files
    are replaced, as everywhere in kerascope)."""
    if isinstance(model, Classifier):
        name = Path(model.source).stem or "model"
    else:
        path = Path(model)
        name = path.stem if path.suffix == ".keras" else path.name
    return fresh_path(f"validate-{name or 'model'}")


def validate(
    model: str | os.PathLike | Classifier,
    data: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    batch_size: int = 32,
    weights: str | None = None,
    tta: TTA | None = None,
    precision: str | None = None,
    top_losses: int = TOP_LOSSES,
    heatmaps: bool = True,
    grid: int = GRID,
) -> Evaluation:
    """Score ``model`` on the labelled folder ``data``; write the evaluation files.

    Args:
        model: a zoo name (``efficientnet_lite0``), a run directory or a ``.keras`` file, or a
            loaded `Classifier`.
        data: one folder per class, named by WordNet id or class name
            (`kerascope.labelled_folders`).
        output: folder for ``metrics.json``, ``confusion.png``, ``top_losses.png`` and
            ``predictions.png`` (its files of those names are replaced); default a new
            ``validate-<model>`` folder here (`default_output`).
        batch_size: images per forward pass.
        weights: explicit weights file for a zoo model.
        tta: average over these views (`kerascope.tta.TTA`); recorded in ``metrics.json``.
        precision: auto, float32, bfloat16 or float16.
        top_losses: images in the top-losses sheet (0: none).
        heatmaps: overlay Grad-CAM on the top-losses sheet.
        grid: images in ``predictions.png`` (0: none).

    Returns:
        An `Evaluation` (top-1 / top-5 with 95 % Wilson intervals, per-class scores, img/s);
        for a multi-label run, the `kerascope.multilabel_eval.MultilabelEvaluation` of every
        row of the label CSV ``data``.

    Example:
        >>> r = kerascope.validate("efficientnet_lite0", "imagenet/val")  # doctest: +SKIP
        >>> r.accuracy, r.top1_interval  # doctest: +SKIP
        (0.75, (0.74, 0.76))
    """
    record = None
    if not isinstance(data, str | os.PathLike):  # a list of folders: "expected str ... not list"
        raise TypeError(f"validate's data is one folder of class folders (or a label CSV), got "
                        f"{type(data).__name__}")  # fmt: skip
    if output is not None:
        check_output_folder(output)  # before the work, not after it
    if not isinstance(model, Classifier):
        folder = run_folder(model)
        if folder is not None:
            read_labels(folder)  # a damaged labels.json: one line, before the model loads
            record = read_split(folder)
    clf = model if isinstance(model, Classifier) else load_model(model, weights=weights)
    out = Path(output) if output is not None else default_output(model)
    if clf.extra.get("multilabel"):  # every row of a label CSV, per-label scores
        from kerascope.multilabel_eval import evaluate_multilabel

        return evaluate_multilabel(clf, data, split="all", output=out,  # type: ignore
                                   batch_size=batch_size, precision=precision, tta=tta)  # fmt: skip
    items = folder_items(data, clf.labels)
    return score_items(
        clf, items, out, data=data, split="all", split_source="folder", record=record,
        batch_size=batch_size, top_losses=top_losses, heatmaps=heatmaps, precision=precision,
        tta=tta, grid=grid,
    )  # fmt: skip
