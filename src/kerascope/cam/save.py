"""Explanations as pictures on disk: original | overlay, labelled, one JPEG per image.

What ``kerascope explain`` writes, as a function: the CLI only parses, calls this and prints.
Images are explained a batch at a time and each picture is written as soon as it is drawn, so
a folder of thousands keeps memory flat: the batches hold only model-size pixels, each file is
decoded again (at most :data:`OUTPUT_MAX_SIDE` px) just to draw its picture, and the results
keep no heatmap (they are in the pictures; `kerascope.explain` returns them).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascope.cam.explain import (
    Explanation,
    _cached_explainer,
    iter_small,
    resolve_targets,
    spread_targets,
)
from kerascope.cam.overlay import (
    DEFAULT_COLORMAP,
    colormap_lut,
    is_empty,
    mark_empty,
    overlay,
    save_jpeg,
    side_by_side,
    upsample,
)
from kerascope.images import ImageError, load_image, resize
from kerascope.inference import Source, load_source, normalise_inputs
from kerascope.zoo.models import Classifier, load_model


@dataclass
class SavedExplanation:
    """One input: its explanation (without the heatmap) and the picture written, or why not."""

    explanation: Explanation
    path: Path | None = None  # the JPEG written; None when ``error`` is set
    empty: bool = False  # the map had nothing to show (no evidence for the class); see is_empty

    @property
    def source(self) -> str:
        return self.explanation.source

    @property
    def error(self) -> str | None:
        return self.explanation.error

    @property
    def ok(self) -> bool:
        return self.explanation.ok


OUTPUT_MAX_SIDE: int = 4096
"""Longest side of the original in a written picture (the picture is twice as wide): larger
images are scaled down to it, so memory per image is bounded (about 300 MB at the cap)."""


def output_name(source: Source, index: int) -> str:
    """``<stem>-output.jpg`` for a file; ``image-<index>-output.jpg`` for an in-memory image."""
    if isinstance(source, str | os.PathLike):
        return f"{Path(source).stem}-output.jpg"
    return f"image-{index}-output.jpg"


def output_names(sources: Sequence[Source]) -> list[str | None]:
    """One unique relative name per source (None for a missing input), so no output of a run
    overwrites another.

    The rule: a file keeps its folder relative to the deepest folder holding every file
    input (``a/pic.jpg b/pic.png`` -> ``a/pic-output.jpg``, ``b/pic-output.jpg``; one folder
    of inputs -> plain ``<stem>-output.jpg``); files that still meet on one name (``pic.jpg``
    and ``pic.png`` side by side) keep their extension (``pic.png-output.jpg``); anything
    else that meets gets ``-2``, ``-3``.
    """
    from kerascope.inference import Missing

    files = [i for i, s in enumerate(sources) if isinstance(s, str | os.PathLike)]
    real = [os.path.abspath(sources[i]) for i in files if not isinstance(sources[i], Missing)]
    root = os.path.commonpath([os.path.dirname(p) for p in real]) if real else ""
    names: list[str | None] = [output_name(s, i) for i, s in enumerate(sources)]
    for i in files:
        if isinstance(sources[i], Missing):
            names[i] = None
            continue
        rel = Path(os.path.relpath(os.path.abspath(sources[i]), root))
        names[i] = str(rel.with_name(f"{rel.stem}-output.jpg"))
    clash = Counter(n.lower() for n in names if n is not None)  # case-insensitive disks too
    for i in files:
        if names[i] is not None and clash[names[i].lower()] > 1:
            rel = Path(os.path.relpath(os.path.abspath(sources[i]), root))
            names[i] = str(rel.with_name(f"{rel.name}-output.jpg"))
    return _numbered(names)


def _numbered(names: list[str | None]) -> list[str | None]:
    """Make the last clashes (case-insensitive file systems included) unique with a counter."""
    seen: set[str] = set()
    out: list[str | None] = []
    for name in names:
        if name is not None:
            base, n = name, 1
            while name.lower() in seen:
                n += 1
                name = base.removesuffix("-output.jpg") + f"-{n}-output.jpg"
            seen.add(name.lower())
        out.append(name)
    return out


def save_explanations(
    inputs: Source | Iterable[Source],
    output_dir: str | os.PathLike = ".",
    model: str | Classifier = "efficientnet_lite0",
    method: str = "gradcam",
    target: None | int | str | Sequence[int | str] = None,
    layer: str | None = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    colormap: str | None = None,
    progress: Callable[[int], None] | None = None,
    colorbar: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
) -> list[SavedExplanation]:
    """Explain images and write each as original | overlay, labelled, into ``output_dir``.

    Files are named ``<stem>-output.jpg`` (``image-<i>-output.jpg`` for the i-th in-memory
    image), keeping sub-folders so that no two outputs of a run share a name (see
    `output_names`), and written atomically (`kerascope.files`). Results stream out: each
    picture is written as soon as it is drawn and only a small record is kept per image, so
    memory does not grow with the number of images; originals larger than
    :data:`OUTPUT_MAX_SIDE` are written scaled down to it.

    Args:
        inputs: what `kerascope.explain` takes: paths, folders, globs, arrays, PIL Images.
        output_dir: created if needed.
        model, method, target, layer, batch_size: as for `kerascope.explain`.
        alpha, colormap: heatmap opacity at its peak, and its colours (see `overlay`; None:
            :data:`~kerascope.cam.overlay.DEFAULT_COLORMAP`).
        progress: called with the number of images done, after each image.
        colorbar: draw a low-to-high key of the colormap under the overlay.
        aug_smooth, eigen_smooth: smoothing options of the explainer (see `Explainer`).

    Returns:
        One `SavedExplanation` per input, in input order (folders and globs in their expansion
        order); a missing or unreadable input has ``error`` set, at its place, and no file.
        ``empty`` is set when the map showed nothing (the picture says so in its label).

    Raises:
        ValueError: an unknown method, layer or class (before any work).
        kerascope.files.OutputError: a picture could not be written (full disk, read-only).

    Example:
        >>> saved = save_explanations("photos/", "explained/")  # doctest: +SKIP
        >>> saved[0].path, saved[0].explanation.class_name  # doctest: +SKIP
        (PosixPath('explained/cat-output.jpg'), 'tabby')
    """
    clf = model if isinstance(model, Classifier) else load_model(model)
    explainer = _cached_explainer(  # a bad method or layer fails first
        clf, method, layer, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth
    )
    colormap = colormap or DEFAULT_COLORMAP
    overlay_check(alpha, colormap)
    sources, _, missing = normalise_inputs(inputs)
    targets = spread_targets(resolve_targets(clf, target, len(sources) - len(missing)), sources)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(sources)
    saved = []
    found = iter_small(clf, explainer, sources, targets, batch_size)
    for source, name, (e, cam) in zip(sources, names, found, strict=True):
        if e.ok:
            e = draw_explanation(source, cam, e, method, alpha, colormap, out_dir / name, colorbar)
        empty = e.ok and is_empty(cam)
        saved.append(SavedExplanation(e, out_dir / name if e.ok else None, empty))
        if progress is not None:
            progress(1)
    return saved


def overlay_check(alpha: float, colormap: str) -> None:
    """Bad drawing options fail before any work, not at the first picture."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap_lut(colormap)


def draw_explanation(
    source: Source,
    cam: np.ndarray,
    e: Explanation,
    method: str,
    alpha: float,
    colormap: str | None,
    path: Path,
    colorbar: bool = False,
) -> Explanation:
    """Write the picture `explain` writes for one explained source (original beside overlay,
    labelled with class, probability and method, and a note when the map is empty, optionally
    a colour key); ``e``, with ``error`` set when the file can no longer be decoded. Shared by
    `save_explanations` and ``kerascope batch explain``. ``colormap`` None: the default."""
    label = mark_empty(f"{e.class_name.replace('_', ' ')} {e.probability:.1%} ({method})", cam)
    return _draw(source, cam, label, alpha, colormap or DEFAULT_COLORMAP, path, e, colorbar)


def _draw(source, cam, label, alpha, colormap, path: Path, e: Explanation, colorbar: bool):
    """Decode ``source`` again at the picture's size, draw and write it; one image at a time."""
    try:
        image = _picture_image(source)
    except (ImageError, ValueError, OSError) as exc:  # changed or removed since the forward
        return dataclasses.replace(e, error=getattr(exc, "reason", str(exc)))
    blended = overlay(image, upsample(cam, image.shape[:2]), alpha, colormap)
    picture = side_by_side(image, blended, label, colorbar=colorbar, colormap=colormap)
    del image, blended
    path.parent.mkdir(parents=True, exist_ok=True)
    save_jpeg(picture, path)
    return e


def _picture_image(source: Source) -> np.ndarray:
    """The original as drawn: full size up to :data:`OUTPUT_MAX_SIDE`, scaled down beyond."""
    if isinstance(source, str | os.PathLike):
        return load_image(source, max_side=OUTPUT_MAX_SIDE)
    image = load_source(source)
    height, width = image.shape[:2]
    if max(height, width) <= OUTPUT_MAX_SIDE:
        return image
    scale = OUTPUT_MAX_SIDE / max(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
