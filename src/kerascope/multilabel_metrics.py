"""Scores of a multi-label classifier: per-label precision / recall / F1 at a threshold,
average precision per label and their mean (mAP), and the per-label threshold that maximises
F1 on validation data.

Definitions follow scikit-learn's (``average_precision_score``: AP = sum over the distinct
scores, high to low, of the recall gained times the precision there; no interpolation), so
the numbers compare with what users of timm / torchmetrics report. NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a label without positives in validation cannot be tuned


def _ranked(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one label: the end index of each distinct score (high to low), true positives and
    false positives when everything up to it is called positive."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], truth[order].astype(np.float64)
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tie group
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    return s, ends, np.stack([tp, fp])


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """AP of one label (NaN when it has no positive: undefined, left out of the mean)."""
    truth, scores = np.asarray(truth) > 0.5, np.asarray(scores, np.float64)
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    _, _, (tp, fp) = _ranked(truth, scores)
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (score >= it: positive) with the highest F1 on these rows: half-way
    between the last score called positive and the next lower one, so new images scoring in
    the gap are not decided by a hair. No positive: `DEFAULT_THRESHOLD`."""
    truth, scores = np.asarray(truth) > 0.5, np.asarray(scores, np.float64)
    positives = truth.sum()
    if positives == 0:
        return DEFAULT_THRESHOLD
    s, ends, (tp, fp) = _ranked(truth, scores)
    f1 = 2 * tp / (2 * tp + fp + (positives - tp))
    best = int(np.argmax(f1))  # ties: the first, i.e. the highest threshold
    cut = ends[best]
    below = s[cut + 1] if cut + 1 < len(s) else 0.0
    return float((s[cut] + below) / 2)


def tune_thresholds(truth: np.ndarray, scores: np.ndarray) -> list[float]:
    """`best_threshold` of each label (columns of ``truth`` and ``scores``)."""
    return [best_threshold(truth[:, j], scores[:, j]) for j in range(truth.shape[1])]


def multilabel_report(truth: np.ndarray, scores: np.ndarray, labels: list[str],
                      thresholds: list[float]) -> dict[str, Any]:  # fmt: skip
    """Per label: support, AP, and precision / recall / F1 at its threshold; then mAP (mean AP
    over labels with a positive), macro F1 and the share of images whose label set is exactly
    right (subset accuracy). Plain data, written as ``metrics.json``."""
    truth = np.asarray(truth) > 0.5
    scores = np.asarray(scores, np.float64)
    called = scores >= np.asarray(thresholds)[None, :]
    per_label = []
    for j, name in enumerate(labels):
        tp = int(np.sum(called[:, j] & truth[:, j]))
        fp = int(np.sum(called[:, j] & ~truth[:, j]))
        fn = int(np.sum(~called[:, j] & truth[:, j]))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label.append({"label": name, "support": int(truth[:, j].sum()),
                          "threshold": float(thresholds[j]),
                          "average_precision": average_precision(truth[:, j], scores[:, j]),
                          "precision": precision, "recall": recall, "f1": f1})  # fmt: skip
    aps = [row["average_precision"] for row in per_label]
    defined = [a for a in aps if not np.isnan(a)]
    return {
        "n": int(len(truth)),
        "mAP": float(np.mean(defined)) if defined else float("nan"),
        "macro_f1": float(np.mean([row["f1"] for row in per_label])),
        "subset_accuracy": float(np.mean(np.all(called == truth, axis=1))),
        "labels": per_label,
    }


def format_report(report: dict[str, Any]) -> str:
    """The per-label table and the headline, as ``evaluate`` prints them."""
    width = max([5] + [len(row["label"]) for row in report["labels"]])
    lines = [f"{'label':<{width}}  support  threshold     AP  precision  recall     F1"]
    for row in report["labels"]:
        lines.append(f"{row['label']:<{width}}  {row['support']:>7}  {row['threshold']:>9.3f}  "
                     f"{row['average_precision']:>5.3f}  {row['precision']:>9.3f}  "
                     f"{row['recall']:>6.3f}  {row['f1']:>5.3f}")  # fmt: skip
    lines.append(f"mAP {report['mAP']:.4f}, macro F1 {report['macro_f1']:.4f}, exact label sets "
                 f"{report['subset_accuracy']:.4f} on {report['n']} images")  # fmt: skip
    return "\n".join(lines)
