"""Classification metrics from labels and probabilities: plain NumPy, no Keras, so they can be
checked by hand (tests/test_evaluate.py) and reused by any command that scores predictions."""

from __future__ import annotations

import numpy as np

MOST_CONFUSED = 20


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


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` most probable. A tie at the k-th
    probability counts against the image (its class is ranked after those it ties with)."""
    true_p = probs[np.arange(len(labels)), labels]
    higher = (probs > true_p[:, None]).sum(axis=1)
    ties = (probs == true_p[:, None]).sum(axis=1) - 1
    return float(np.mean(higher + ties < k)) if len(labels) else float("nan")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (Wilson 1927, eq. as in Brown, Cai &
    DasGupta 2001, eq. 4): unlike the normal approximation it stays inside [0, 1] and is
    honest for the small test sets people evaluate on (4 of 4 right is not "100 % +- 0")."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def most_confused(
    confusion: np.ndarray, classes: list[str], count: int = MOST_CONFUSED
) -> list[tuple[str, str, int]]:
    """``(true, predicted, images)`` of the largest off-diagonal cells, most first (fastai's
    ``most_confused``); ties in class order."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.flatnonzero(off)
    order = flat[np.argsort(-off.flat[flat], kind="stable")][:count]
    k = len(classes)
    return [(classes[i // k], classes[i % k], int(off.flat[i])) for i in order]
