"""The text ``evaluate`` and ``validate`` print: the confusion table, per-class scores and the
headline numbers of an `kerascope.evaluation.Evaluation` (split from ``evaluation``, which
computes them)."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

from kerascope.output import counted

if TYPE_CHECKING:
    from kerascope.evaluation import Evaluation

MATRIX_CLASSES = 50
"""Above this many classes the confusion picture and the printed table show the most confused
pairs (fastai's ``most_confused``) instead of the full matrix, and ``metrics.json`` keeps the
matrix's non-zero cells only."""


def top5_note(result: Evaluation) -> str:
    """``", top-5 0.9500"`` when top-5 accuracy was measured, else nothing."""
    return "" if result.top5_accuracy is None else f", top-5 {result.top5_accuracy:.4f}"


def format_confusion(result: Evaluation) -> str:
    """The confusion matrix (the most confused pairs above `MATRIX_CLASSES` classes) and the
    per-class scores as a plain-text table, then the headline numbers (for the CLI)."""
    from kerascope.output import printable

    classes = result.classes
    big = len(classes) > MATRIX_CLASSES
    predicted_n = np.asarray(result.confusion).sum(axis=0)
    shown = [c for i, c in enumerate(classes)
             if not big or result.per_class[c].support or predicted_n[i]]  # fmt: skip
    name = {c: printable(c) for c in classes}  # escaped before measured: the columns align
    width = max(8, *(display_width(name[c]) for c in shown))
    lines = []
    if not big:
        corner = "true \\ pred"
        first = max(width, len(corner))
        lines.append(f"{corner:<{first}}  "
                     + "  ".join(pad(name[c], width, right=True) for c in classes))  # fmt: skip
        for c, row in zip(classes, result.confusion, strict=True):
            lines.append(pad(name[c], first) + "  " + "  ".join(f"{v:>{width}}" for v in row))
    else:
        lines.append("most confused (true -> predicted: images):")
        lines += [f"  {t} -> {p}: {n}" for t, p, n in result.most_confused[:10]] or ["  none"]
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for c in shown:
        s = result.per_class[c]
        lines.append(f"{pad(name[c], width)}  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:6.3f}"
                     f"  {s.support:7d}")  # fmt: skip
    if big:
        lines.append(f"({len(shown)} of {len(classes)} classes shown: those with images or "
                     "predictions)")  # fmt: skip
    lines.append(headline(result))
    if result.unreadable:
        lines.append(f"{counted(len(result.unreadable), 'unreadable image')} left out")
    return "\n".join(lines)


def headline(result: Evaluation) -> str:
    """Two lines: ``accuracy 0.5000, top-5 1.0000 on 4 images`` and the 95 % intervals,
    speed and TTA (``95 % CI (Wilson): top-1 0.15-0.85, top-5 0.51-1.00; 12.3 img/s``)."""
    lo, hi = result.top1_interval
    text = f"accuracy {result.accuracy:.4f}{top5_note(result)} on {counted(result.n, 'image')}\n"
    text += f"95 % CI (Wilson): top-1 {lo:.2f}-{hi:.2f}"
    if result.top5_interval is not None:
        text += f", top-5 {result.top5_interval[0]:.2f}-{result.top5_interval[1]:.2f}"
    text += f"; {result.images_per_second:.1f} img/s"
    if result.tta is not None:
        text += f"; TTA: mean of {result.tta['views']} views ({_tta_words(result.tta)})"
    return text


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide and fullwidth characters (猫,
    长颈鹿) take two, combining marks none; ``len`` put a CJK class name's cells out of line."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)  # fmt: skip


def pad(text: str, width: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` display columns (`display_width`), on the left
    when ``right`` (right-aligned), else on the right."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def _tta_words(tta: dict[str, Any]) -> str:
    return " + ".join(([f"{tta['crops']} crops"] if tta["crops"] > 1 else [])
                      + (["flip"] if tta["flip"] else []))  # fmt: skip
