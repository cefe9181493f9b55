"""Batch inference: images in, top-k predictions out, with decoding overlapped with the model.

Inputs enter through the inference core (`kerascope.inference`): `normalise_inputs` turns
paths, folders, globs, RGB arrays and PIL Images into sources in input order, and
`iter_batches` decodes them, missing and unreadable inputs as error items in place (both are
re-exported here).

Pixels stay uint8 until the engine; normalisation is part of the model graph. On CPU the
forward pass runs through onnxruntime on a graph converted from the Keras model (measured
~19x faster than Keras-JAX for EfficientNet-Lite0 on 2 cores; see benchmarks/classify_cpu.py);
elsewhere, and whenever the conversion does not cover a layer, through Keras itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from kerascope.inference import (  # noqa: F401  (re-exported: the one way inputs enter)
    MISSING_INPUT,
    Item,
    Missing,
    Source,
    decode_item,
    iter_batches,
    load_source,
    normalise_inputs,
    source_name,
)
from kerascope.zoo.models import Classifier


@dataclass
class Prediction:
    rank: int
    index: int
    class_id: str  # WordNet id for ImageNet models, the class index for trained ones
    name: str
    probability: float


@dataclass
class ImageResult:
    """One input: its predictions, or the reason it could not be classified."""

    source: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def top_k(
    probs: np.ndarray, labels: list[tuple[str, str]], k: int, threshold: float
) -> list[Prediction]:
    order = np.argsort(-probs)[: max(1, k)]
    return [
        Prediction(rank + 1, int(i), labels[i][0], labels[i][1], float(probs[i]))
        for rank, i in enumerate(order)
        if probs[i] >= threshold or rank == 0
    ]


def classify_sources(
    clf: Classifier,
    sources: Sequence,
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
    progress=None,
) -> Iterator[ImageResult]:
    """Yield one result per source, in order; failures (missing included) carry their reason.

    Pictures are fitted to the input under ``clf.convention`` (a centre crop for zoo weights
    whose published accuracy was measured so), as the weights were evaluated.
    """
    from kerascope.inference import compiled

    forward = compiled(clf.model)
    for items in iter_batches(sources, clf.input_size, batch_size, convention=clf.convention):
        good = [it for it in items if it.error is None]
        probs = forward(np.stack([it.pixels for it in good])) if good else None
        row = 0
        for it in items:
            if it.error is not None:
                yield ImageResult(it.source, error=it.error)
            else:
                yield ImageResult(it.source, top_k(probs[row], clf.labels, top, threshold))
                row += 1
        if progress is not None:
            progress(len(items))


def iter_classify(
    inputs: Source | Iterable[Source],
    model: str | Classifier = "efficientnet_lite0",
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
) -> Iterator[ImageResult]:
    """`classify`, one `ImageResult` at a time as each batch finishes.

    For long jobs: a caller that stops early (Ctrl-C, a deadline) keeps every result it has
    seen, and memory does not grow with the number of images.
    """
    from kerascope.zoo.models import load_model

    clf = model if isinstance(model, Classifier) else load_model(model)
    sources, _, _ = normalise_inputs(inputs)
    yield from classify_sources(clf, sources, top, threshold, batch_size)


def classify(
    inputs: Source | Iterable[Source],
    model: str | Classifier = "efficientnet_lite0",
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
) -> list[ImageResult]:
    """Classify images given as paths, folders, globs, RGB arrays or PIL Images.

    Returns one `ImageResult` per image, in input order (folders and globs in their expansion
    order); missing and unreadable inputs come back at their place with ``error`` set instead
    of raising, so one bad file never loses the rest of the batch. `iter_classify` yields the
    same results as they are computed.

    Example:
        >>> results = kerascope.classify("photos/")
        >>> results[0].predictions[0].name
        'tabby'
    """
    return list(iter_classify(inputs, model, top, threshold, batch_size))
