"""Evaluation pictures beside ``kerascope.report``'s: the predictions grid (the tutorials'
4x4 "cat 97%" picture) and, for many classes, the most confused pairs (fastai's
``most_confused``) in place of an unreadable 1000x1000 matrix.

Matplotlib (Agg, files only) is imported on first use, as in ``kerascope.report``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kerascope.output import percent, printable_lines
from kerascope.report import _save, image_grid, new_figure

RIGHT, WRONG = "#1a7f37", "#cf222e"


def prediction_title(predicted: str, probability: float, truth: str) -> tuple[str, bool]:
    """A tile's title and whether it is right: ``"tabby 97.0%"``, or ``"✗ tiger_cat 38.5%\\n(true:
    tabby)"`` when the prediction is wrong (`kerascope.output.percent`: never "0%" for a class
    the model gives something)."""
    text = f"{predicted} {percent(probability)}"
    if predicted == truth:
        return text, True
    return f"\u2717 {text}\n(true: {truth})", False


def plot_predictions(
    images: Sequence[np.ndarray],
    predicted: Sequence[str],
    probabilities: Sequence[float],
    truths: Sequence[str],
    path: str | os.PathLike,
    cols: int = 4,
) -> Path:
    """A grid of images titled with the predicted class and its probability; a wrong
    prediction is marked (red title, a cross, and the true class)."""
    fig, axes = image_grid(len(images), cols, 3.6)
    tiles = zip(axes.flat, images, predicted, probabilities, truths, strict=False)
    for ax, image, guess, p, truth in tiles:
        title, right = prediction_title(guess, p, truth)
        ax.imshow(image)
        ax.set_title(title, fontsize=10, color=RIGHT if right else WRONG)
        if not right:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(WRONG)
                spine.set_linewidth(3)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def plot_most_confused(
    pairs: Sequence[tuple[str, str, int]], n: int, path: str | os.PathLike
) -> Path:
    """Horizontal bars of the most frequent (true -> predicted) mistakes, most at the top."""
    shown = list(pairs)[:20]
    fig, ax = new_figure(figsize=(8, 1.5 + 0.35 * max(1, len(shown))))
    if shown:
        labels = [printable_lines(f"{t} \u2192 {p}") for t, p, _ in shown][::-1]
        counts = [c for _, _, c in shown][::-1]
        ax.barh(range(len(shown)), counts, color="#4c72b0")
        ax.set_yticks(range(len(shown)), labels)
        ax.set_xlabel(f"images (of {n} scored)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
    ax.set_title("most confused: true \u2192 predicted")
    return _save(fig, path)
