"""Explanations as pictures on disk: original | overlay, labelled, one JPEG per image.

What ``kerascope explain`` writes, as a function: the CLI only parses, calls this and prints.
Images are explained a batch at a time and each picture is written as soon as it is drawn, so
a folder of thousands keeps memory flat; the heatmaps are not kept in the results (they are in
the pictures; `kerascope.explain` returns them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kerascope.cam.explain import (
    Explanation,
    _cached_explainer,
    iter_explanations,
    resolve_targets,
    spread_targets,
)
from kerascope.cam.overlay import overlay, save_jpeg, side_by_side
from kerascope.inference import Source, normalise_inputs
from kerascope.zoo.models import Classifier, load_model


@dataclass
class SavedExplanation:
    """One input: its explanation (without the heatmap) and the picture written, or why not."""

    explanation: Explanation
    path: Path | None = None  # the JPEG written; None when ``error`` is set

    @property
    def source(self) -> str:
        return self.explanation.source

    @property
    def error(self) -> str | None:
        return self.explanation.error

    @property
    def ok(self) -> bool:
        return self.explanation.ok


def output_name(source: Source, index: int) -> str:
    """``<stem>-output.jpg`` for a file; ``image-<index>-output.jpg`` for an in-memory image."""
    if isinstance(source, str | os.PathLike):
        return f"{Path(source).stem}-output.jpg"
    return f"image-{index}-output.jpg"


def save_explanations(
    inputs: Source | Iterable[Source],
    output_dir: str | os.PathLike = ".",
    model: str | Classifier = "efficientnet_lite0",
    method: str = "gradcam",
    target: None | int | str | Sequence[int | str] = None,
    layer: str | None = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    colormap: str = "jet",
    progress: Callable[[int], None] | None = None,
) -> list[SavedExplanation]:
    """Explain images and write each as original | overlay, labelled, into ``output_dir``.

    Files are named ``<stem>-output.jpg`` (``image-<i>-output.jpg`` for the i-th in-memory
    image) and written atomically: a temp file in ``output_dir``, then ``os.replace``.

    Args:
        inputs: what `kerascope.explain` takes: paths, folders, globs, arrays, PIL Images.
        output_dir: created if needed.
        model, method, target, layer, batch_size: as for `kerascope.explain`.
        alpha, colormap: heatmap opacity at its peak, and its colours (see `overlay`).
        progress: called with the number of images done, after each image.

    Returns:
        One `SavedExplanation` per input, in input order (folders and globs in their expansion
        order); a missing or unreadable input has ``error`` set, at its place, and no file.

    Raises:
        ValueError: an unknown method, layer or class (before any work).

    Example:
        >>> saved = save_explanations("photos/", "explained/")  # doctest: +SKIP
        >>> saved[0].path, saved[0].explanation.class_name  # doctest: +SKIP
        (PosixPath('explained/cat-output.jpg'), 'tabby')
    """
    clf = model if isinstance(model, Classifier) else load_model(model)
    explainer = _cached_explainer(clf, method, layer)  # a bad method or layer fails first
    sources, _, missing = normalise_inputs(inputs)
    targets = spread_targets(resolve_targets(clf, target, len(sources) - len(missing)), sources)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    found = iter_explanations(clf, explainer, sources, targets, batch_size)
    for i, (source, (e, image)) in enumerate(zip(sources, found, strict=True)):
        if e.ok:
            label = f"{e.class_name.replace('_', ' ')} {e.probability:.1%} ({method})"
            picture = side_by_side(image, overlay(image, e.heatmap, alpha, colormap), label)
            path = out_dir / output_name(source, i)
            save_jpeg(picture, path)
            saved.append(SavedExplanation(dataclasses.replace(e, heatmap=None), path))
        else:
            saved.append(SavedExplanation(e))
        if progress is not None:
            progress(1)
    return saved
