"""``evaluate RUN DATA.csv`` for a multi-label run: per-label precision / recall / F1 at the
thresholds the run tuned on validation, average precision per label and mAP, written as
``metrics.json`` (`kerascope.multilabel_metrics`).

The rows scored: with the run's own CSV, ``--split auto`` / ``validation`` take the rows the
run held out (``multilabel.json``), ``train`` the ones it trained on, ``all`` every row; any
other CSV is scored whole. Pictures are squashed to the model's input, as in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.multilabel import pixels_of, read_label_csv
from kerascope.errors import ConfigError
from kerascope.files import finite, make_output_folder, write_json
from kerascope.multilabel_metrics import multilabel_report
from kerascope.tta import TTA, as_tta
from kerascope.zoo.models import Classifier, load_model


@dataclass
class MultilabelEvaluation:
    """What ``evaluate`` found for a multi-label run (also in ``output/metrics.json``)."""

    report: dict[str, Any]  # `multilabel_report`
    n: int
    data: Path
    split: str  # validation, train or all
    output: Path
    trained_on: int  # scored rows the run trained on (an optimistic number when > 0)
    tta: dict[str, Any] | None = None  # `kerascope.tta.TTA.to_dict` when averaged over views

    @property
    def mAP(self) -> float:  # noqa: N802  (the name everyone uses)
        return float(self.report["mAP"])


def is_multilabel_run(run: Any) -> bool:
    """Whether ``run`` (a run directory, ``.keras`` file or Classifier) is multi-label."""
    if isinstance(run, Classifier):
        return bool(run.extra.get("multilabel"))
    from kerascope.zoo.sigmoid_heads import read_multilabel

    path = Path(run)
    if not path.exists():  # a zoo name
        return False
    return read_multilabel(path if path.is_dir() else path.parent) is not None


def evaluate_multilabel(
    run: str | os.PathLike | Classifier,
    data: str | os.PathLike,
    *,
    split: str = "auto",
    output: str | os.PathLike | None = None,
    batch_size: int = 32,
    precision: str | None = None,
    tta: TTA | None = None,
) -> MultilabelEvaluation:
    """Score a multi-label run on the label CSV ``data`` and write ``metrics.json``.

    Args:
        run: the run directory (or a loaded Classifier of one).
        data: a ``path,labels`` CSV naming the run's labels (`kerascope.data.multilabel`).
        split: ``auto`` (validation rows of the run's own CSV, else all), ``validation``,
            ``train`` or ``all``.
        output: folder for ``metrics.json``; default the run directory for its own CSV, else
            ``evaluations/<CSV name>`` inside it.
        precision: what the model computes in (`kerascope.classification.run_precision`).
        tta: score each picture by its label probabilities averaged over these views
            (`kerascope.tta.TTA`); the thresholds stay the run's.

    Raises:
        ConfigError: not a multi-label run, or not a CSV.
        kerascope.data.DatasetError: a bad row (its number named), a label the run lacks.
    """
    from kerascope.classification import run_precision
    from kerascope.inference import compiled

    clf = run if isinstance(run, Classifier) else load_model(run)
    record = clf.extra.get("multilabel")
    if not record:
        raise ConfigError(f"'{clf.source}' is not a multi-label run (no multilabel.json beside "
                          "it); evaluate it on class folders")  # fmt: skip
    if not str(data).lower().endswith(".csv"):
        raise ConfigError(f"a multi-label run is evaluated on a CSV of path,labels rows, not "
                          f"'{data}'")  # fmt: skip
    labels = [name for _, name in clf.labels]
    table = read_label_csv(data, labels=labels)
    own = str(table.csv) == record.get("csv")
    splits = record.get("splits", {}) if own else {}
    chosen = "validation" if split == "auto" and own else "all" if split == "auto" else split
    if chosen not in ("validation", "train", "all"):
        raise ConfigError(f"split must be auto, validation, train or all, got {split!r}")
    relative = table.relative(np.arange(len(table)))
    if chosen == "all":
        rows = np.arange(len(table))
    elif not own:
        raise ConfigError(f"--split {chosen} needs the CSV the run trained from "
                          f"({record.get('csv')}); score '{table.csv}' with --split "
                          "all")  # fmt: skip
    else:
        wanted = set(splits.get(chosen, []))
        rows = np.array([i for i, p in enumerate(relative) if p in wanted], int)
    trained = set(splits.get("train", []))
    trained_on = sum(relative[i] in trained for i in rows)
    forward = compiled(clf.model, precision=run_precision(clf, precision))
    tta = as_tta(tta)
    views = tta.make_views if tta is not None else lambda pixels: [pixels]
    scores = np.concatenate([
        np.mean([np.asarray(forward(v), np.float64)
                 for v in views(pixels_of(table, rows[i:i + batch_size], clf.input_size))],
                axis=0)
        for i in range(0, len(rows), batch_size)])  # fmt: skip
    report = multilabel_report(table.targets[rows], scores, labels, record["thresholds"])
    run_dir = Path(clf.source).parent
    folder = Path(output) if output else run_dir if own else (
        run_dir / "evaluations" / table.csv.stem)  # fmt: skip
    make_output_folder(folder)
    write_json(folder / "metrics.json", finite({"task": "multilabel", "data": str(table.csv),
                                                "split": chosen, "trained_on": int(trained_on),
                                                "tta": tta.to_dict() if tta else None,
                                                **report}))  # fmt: skip
    return MultilabelEvaluation(report, len(rows), table.csv, chosen, folder, int(trained_on),
                                tta.to_dict() if tta else None)  # fmt: skip


def summary_lines(result: MultilabelEvaluation) -> list[str]:
    """What ``evaluate`` / ``validate`` say after the table: the headline, a warning when
    trained-on rows were scored, and where the metrics went."""
    which = {"validation": "the rows the run held out for validation",
             "train": "the rows the run trained on"}.get(result.split, "every row")  # fmt: skip
    lines = [f"mAP {result.mAP:.4f} on {result.n} images: {which} of {result.data} "
             "(thresholds: the run's, tuned for max F1 on validation)"]  # fmt: skip
    if result.tta:
        lines.append(f"probabilities are the mean of {result.tta['views']} views per image "
                     "(TTA)")  # fmt: skip
    if result.trained_on:
        lines.append(f"WARNING: {result.trained_on} of the {result.n} scored images were used "
                     "to train this model, so these numbers overstate how it does on new "
                     "images")  # fmt: skip
    lines.append(f"metrics in {result.output / 'metrics.json'}")
    return lines
