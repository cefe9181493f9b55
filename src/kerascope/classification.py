"""Batch inference: images in, top-k predictions out, with decoding overlapped with the model.

Also the one way inputs enter kerascope: `normalise_inputs` turns paths, folders, globs, RGB
arrays and PIL Images into sources, and `iter_batches` decodes them (classify, explain,
evaluate, predict and features all go through both).

Pixels stay uint8 until the engine; normalisation is part of the model graph. On CPU the
forward pass runs through onnxruntime on a graph converted from the Keras model (measured
~19x faster than Keras-JAX for EfficientNet-Lite0 on 2 cores; see benchmarks/classify_cpu.py);
elsewhere, and whenever the conversion does not cover a layer, through Keras itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from kerascope.images import ImageError, as_rgb_array, expand_inputs, load_image, resize, to_rgb
from kerascope.zoo.models import Classifier

# The reason given for an input that names nothing on disk (a path, folder or glob).
MISSING_INPUT = "no such file, folder or matching glob"


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


@dataclass
class Item:
    """A decoded input ready for a model, or the error met while decoding it."""

    source: str
    pixels: np.ndarray | None = None  # (H, W, 3) uint8 at the model's input size
    original: np.ndarray | None = None  # full-resolution RGB, kept when asked for
    error: str | None = None


Source = str | os.PathLike | np.ndarray | Image.Image
"""One input: a path (file, folder or glob), an RGB array or a PIL Image."""


def source_name(source) -> str:
    """How a source is named in results: its path, else ``<array>`` or ``<image>``."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "<image>" if isinstance(source, Image.Image) else "<array>"


def load_source(source) -> np.ndarray:
    """One source at full resolution as (H, W, 3) uint8 RGB.

    Raises:
        ImageError: an unreadable file. ValueError: an array or image that is not a picture.
    """
    if isinstance(source, str | os.PathLike):
        return load_image(source)
    if isinstance(source, Image.Image):
        return as_rgb_array(np.asarray(to_rgb(source)))  # what a file of it would give
    return as_rgb_array(source)


def decode_item(source, size: tuple[int, int], keep_original: bool = False) -> Item:
    """Decode one source and resize it to ``size``; a failure comes back as ``Item.error``."""
    name = source_name(source)
    try:
        image = load_source(source)
    except ImageError as exc:
        return Item(name, error=exc.reason)
    except (ValueError, OSError) as exc:
        return Item(name, error=str(exc))
    return Item(name, resize(image, size), image if keep_original else None)


def normalise_inputs(inputs) -> tuple[list, list[str], list[str]]:
    """Turn inputs into sources; also return the skipped (non-image) and missing paths.

    ``inputs`` is one source or an iterable of them: paths (files, folders walked
    recursively, globs), (H, W, 3) arrays, PIL Images, or an (N, H, W, 3) array. Paths and
    in-memory images are not mixed in one call.
    """
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs), [], []
    if isinstance(inputs, str | os.PathLike | np.ndarray | Image.Image):
        inputs = [inputs]
    inputs = list(inputs)
    images = [x for x in inputs if isinstance(x, np.ndarray | Image.Image)]
    paths = [x for x in inputs if not isinstance(x, np.ndarray | Image.Image)]
    if images and paths:
        raise ValueError("pass either paths or in-memory images (arrays, PIL), not both")
    if images:
        return images, [], []
    found = expand_inputs(paths)
    return list(found.paths), list(found.skipped), list(found.missing)


def iter_batches(
    sources: Sequence, size: tuple[int, int], batch_size: int, keep_original: bool = False
) -> Iterator[list[Item]]:
    """Decode in a thread pool, one batch ahead of the consumer (Pillow releases the GIL)."""
    workers = min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        chunks = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
        pending = None
        for chunk in chunks:
            future = [pool.submit(decode_item, s, size, keep_original) for s in chunk]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = future
        if pending is not None:
            yield [f.result() for f in pending]


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
    """Yield one result per source, in order; failures carry their reason, never raise."""
    from kerascope.inference import compiled

    forward = compiled(clf.model)
    for items in iter_batches(sources, clf.input_size, batch_size):
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


def classify(
    inputs: Source | Iterable[Source],
    model: str | Classifier = "efficientnet_lite0",
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
) -> list[ImageResult]:
    """Classify images given as paths, folders, globs, RGB arrays or PIL Images.

    Returns one `ImageResult` per image, in input order; unreadable inputs come back with
    ``error`` set instead of raising, so one bad file never loses the rest of the batch.

    Example:
        >>> results = kerascope.classify("photos/")
        >>> results[0].predictions[0].name
        'tabby'
    """
    from kerascope.zoo.models import load_model

    clf = model if isinstance(model, Classifier) else load_model(model)
    sources, _, missing = normalise_inputs(inputs)
    results = [ImageResult(m, error=MISSING_INPUT) for m in missing]
    results += list(classify_sources(clf, sources, top, threshold, batch_size))
    return results
