"""Test-time augmentation: average the model's probabilities over a few fixed views of a picture.

The views are made from the picture as the model sees it without TTA (decoded and fitted to
the input size, exactly as ``classify`` fits it), so TTA can only add views, never change the
base one:

- ``crops`` = 1: the fitted picture itself.
- ``crops`` = 5: the fitted picture and its four corner crops (top-left, top-right,
  bottom-left, bottom-right), each ``CROP_SHARE`` (87.5 %, the ImageNet eval ratio 224/256) of
  the height and width (rounded to whole pixels), resized back to the input size with Pillow's
  bilinear filter.
- ``flip``: every view above also in its horizontal mirror image (``x[:, ::-1]``).

``--tta`` alone is ``flip`` with ``crops`` 1: 2 views (as fastai's and timm's default flip TTA);
``--tta-crops 5`` with it is 10 views. The probabilities of the views are averaged (arithmetic
mean of the softmax outputs), so the result is still a probability row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascope.classification import ImageResult, Prediction, run_precision
from kerascope.inference import compiled
from kerascope.sources import PixelBatch, iter_pixel_batches
from kerascope.zoo.models import Classifier

CROP_SHARE = 0.875
CROPS = (1, 5)


@dataclass(frozen=True)
class TTA:
    """Which views are averaged: ``flip`` adds each view's mirror image; ``crops`` 1 or 5."""

    flip: bool = True
    crops: int = 1

    def __post_init__(self) -> None:
        if self.crops not in CROPS:
            raise ValueError(f"TTA crops must be one of {CROPS}, not {self.crops}")

    @property
    def views(self) -> int:
        """How many forward passes each picture costs."""
        return self.crops * (2 if self.flip else 1)

    def describe(self) -> str:
        """What ``metrics.json`` and the report say: ``"flip"``, ``"5 crops + flip"``."""
        parts = ([] if self.crops == 1 else [f"{self.crops} crops"]) + (["flip"] if self.flip
                                                                         else [])  # fmt: skip
        return " + ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"flip": self.flip, "crops": self.crops, "views": self.views,
                "crop_share": CROP_SHARE if self.crops > 1 else None}  # fmt: skip

    def make_views(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The (N, H, W, 3) uint8 batches the model runs on, first the untouched ``pixels``."""
        base = [pixels] + ([] if self.crops == 1 else corner_crops(pixels))
        return base + ([v[:, :, ::-1] for v in base] if self.flip else [])


def add_tta_options(parser: Any) -> None:
    """``--tta`` and ``--tta-crops`` on a command (evaluate, validate, predict, classify)."""
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: average "
                        "the probabilities of each picture and its horizontal mirror image "
                        "(2 forward passes per image)")  # fmt: skip
    parser.add_argument("--tta-crops", type=int, choices=CROPS, default=1, help="with 5: also "
                        "the 4 corner crops (87.5 %% of each side, resized back), each mirrored "
                        "too with --tta (10 passes)")  # fmt: skip


def tta_from_args(args: Any) -> TTA | None:
    """The parsed ``--tta`` / ``--tta-crops N`` as a `TTA`, or None when neither was given."""
    flip, crops = bool(getattr(args, "tta", False)), int(getattr(args, "tta_crops", 1))
    if not flip and crops == 1:
        return None
    return TTA(flip=flip, crops=crops)


def corner_crops(pixels: np.ndarray) -> list[np.ndarray]:
    """The four corner crops of each picture of ``pixels``, resized back to its size."""
    from PIL import Image

    _, height, width, _ = pixels.shape
    ch, cw = round(height * CROP_SHARE), round(width * CROP_SHARE)
    boxes = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw)]
    views = []
    for top, left in boxes:
        view = np.empty_like(pixels)
        for i, picture in enumerate(pixels):
            crop = Image.fromarray(np.ascontiguousarray(picture[top : top + ch, left : left + cw]))
            view[i] = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
        views.append(view)
    return views


def as_tta(value: TTA | bool | None) -> TTA | None:
    """A `TTA`, ``True`` for the default views (what ``--tta`` means), None or False for none;
    anything else is a TypeError naming it (``tta=True`` was "'bool' object has no attribute
    'make_views'")."""
    if value is None or value is False:
        return None
    if value is True:
        return TTA()
    if not isinstance(value, TTA):
        raise TypeError(f"tta is a kerascope.tta.TTA (or True for its default views: mirror "
                        f"images), got {value!r:.60}")  # fmt: skip
    return value


def iter_tta_outputs(
    clf: Classifier,
    sources: Sequence,
    tta: TTA,
    batch_size: int = 32,
    precision: str | None = None,
) -> Iterator[tuple[PixelBatch, np.ndarray | None]]:
    """``(batch, mean probabilities)`` per batch, as `kerascope.classification.iter_outputs`
    with ``top=None`` yields them, but averaged over ``tta``'s views (all views of a batch
    are dispatched before the first result is read back)."""
    tta = as_tta(tta)
    forward = compiled(clf.model, precision=run_precision(clf, precision))
    if isinstance(sources, np.ndarray):
        sources = list(sources)
    batches = iter_pixel_batches(
        sources, clf.input_size, batch_size, clf.convention,
        rows=lambda n: forward.rows(n, batch_size, len(sources)),
    )  # fmt: skip
    for batch in batches:
        if not batch.ok:
            yield batch, None
            continue
        running = [forward.start(view, batch_size, len(sources))
                   for view in tta.make_views(batch.pixels)]  # fmt: skip
        total = None
        for pending in running:
            out = np.asarray(pending.result(), np.float64)[: batch.n]
            total = out if total is None else total + out
        yield batch, (total / len(running)).astype(np.float32)


def classify_tta(
    clf: Classifier,
    sources: Sequence,
    tta: TTA,
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
    precision: str | None = None,
) -> Iterator[ImageResult]:
    """`kerascope.classification.classify_sources` on TTA-averaged probabilities: one result
    per source, in order, failures with their reason."""
    labels = clf.labels
    k = max(1, min(int(top), len(labels)))
    for batch, probs in iter_tta_outputs(clf, sources, tta, batch_size, precision):
        for i, (name, error) in enumerate(zip(batch.names, batch.errors, strict=True)):
            if error is not None:
                yield ImageResult(name, error=error)
                continue
            order = np.argsort(-probs[i], kind="stable")[:k]  # ties to the lower index
            rows = [Prediction(rank, int(j), *labels[j], float(probs[i][j]))
                    for rank, j in enumerate(order, 1)]  # fmt: skip
            yield ImageResult(name, [p for p in rows if p.probability >= threshold or p.rank == 1])
