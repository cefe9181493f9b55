"""Batch inference: images in, top-k predictions out, with decoding overlapped with the model.

Inputs enter through the inference core (`kerascope.inference`): `normalise_inputs` turns
paths, folders, globs, RGB arrays and PIL Images into sources in input order, and
`iter_batches` decodes them, missing and unreadable inputs as error items in place (both are
re-exported here).

Pixels stay uint8 until the engine, decoded straight into one array per batch; normalisation
is part of the model graph. On CPU the forward pass runs through onnxruntime on a graph
converted from the Keras model (measured ~19x faster than Keras-JAX for EfficientNet-Lite0 on
2 cores; see benchmarks/classify_cpu.py); elsewhere, for reduced precision, and whenever the
conversion does not cover a layer, through Keras itself, jitted on JAX with the top-k selection
inside (`kerascope.inference.Forward.top_k`) and batches padded to a few fixed shapes.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerascope.batch_sizes import whole_number
from kerascope.dispatch import dispatch_ahead
from kerascope.inference import Pending, compiled, host_top_k, on_cpu
from kerascope.precision import resolve_precision
from kerascope.sources import (  # noqa: F401  (re-exported: the one way inputs enter)
    MISSING_INPUT,
    Item,
    Missing,
    PixelBatch,
    Source,
    decode_item,
    iter_batches,
    iter_pixel_batches,
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
    """The ``k`` most probable classes of one probability row (rank 1 always kept)."""
    values, indices = host_top_k(np.asarray(probs)[None], k)
    return _predictions(values[0].tolist(), indices[0].tolist(), labels, threshold)


def _predictions(values: list[float], indices: list[int], labels: list[tuple[str, str]],
                 threshold: float) -> list[Prediction]:  # fmt: skip
    return [
        Prediction(rank, i, *labels[i], p)
        for rank, (i, p) in enumerate(zip(indices, values, strict=True), 1)
        if p >= threshold or rank == 1
    ]


def group_top_k(rows: np.ndarray, groups: list, k: int, threshold: float) -> list[list[Prediction]]:
    """Group probability rows (N, G) -> the ``k`` most probable groups of each row.

    A group of several classes has ``index`` -1 (no single output is it); a class standing for
    itself keeps its index. Ties keep the order of ``groups``.
    """
    from kerascope.zoo.imagenet import resolve_class

    k = max(1, min(int(k), len(groups)))
    out = []
    for row in np.asarray(rows, np.float64):
        order = np.argsort(-row, kind="stable")[:k]
        out.append([
            Prediction(rank, resolve_class(groups[j].wnid) if groups[j].is_class else -1,
                       groups[j].wnid, groups[j].name, float(row[j]))
            for rank, j in enumerate(order.tolist(), 1)
            if row[j] >= threshold or rank == 1
        ])  # fmt: skip
    return out


def _groups_of(clf: Classifier, group: bool | str | Sequence[str]) -> tuple[list, bool] | None:
    """``group`` as the classify functions take it -> (groups, rest) or None (no roll-up)."""
    if group is False or group is None:
        return None
    if not (group is True or isinstance(group, str) or isinstance(group, Sequence)):
        raise TypeError(f"group is True (the everyday groups), names (\"cat,dog\" or a list) "
                        f"or False, got {group!r:.60}")  # fmt: skip
    from kerascope.zoo.hierarchy import basic_groups, check_imagenet, resolve_groups

    check_imagenet(clf.labels, f"model '{clf.name}'")
    return (basic_groups(), True) if group is True else (resolve_groups(group), False)


def run_precision(clf: Classifier, precision: str | None = None) -> str:
    """The concrete precision a job on ``clf`` computes in: ``precision``, else the one
    `load_model` was given, else ``KERASCOPE_PRECISION``, else auto (bfloat16 on GPUs that
    compute it natively, float32 elsewhere)."""
    return resolve_precision(precision or clf.extra.get("precision"))


def iter_outputs(
    clf: Classifier,
    sources: Sequence,
    batch_size: int = 32,
    top: int | None = None,
    precision: str | None = None,
    device_fit: bool | None = None,
) -> Iterator[tuple[PixelBatch, Any]]:
    """``(batch, outputs)`` for each batch of ``sources``, in order: the pipeline every
    classifier job runs on.

    ``outputs`` is ``(values, indices)`` of the ``top`` most probable classes per input, or the
    whole probability rows when ``top`` is None; one row per input of the batch (an input that
    failed has a row of no meaning: check ``batch.errors``), None when no input of the batch
    could be read. Decoding runs ``PREFETCH + 1`` batches ahead on every core; batch i + 1 is
    dispatched to the device before batch i's results are copied back, so the device always
    has the next batch while the host turns results into objects.

    ``sources`` may be one (N, H, W, 3) uint8 array (`is_picture_batch`): with ``device_fit``
    (default: on a GPU or TPU, where it costs nothing; on a CPU Pillow's resize in the decode
    threads measured 3x faster than XLA's) its batches are fitted inside the compiled forward.
    """
    forward = compiled(clf.model, precision=run_precision(clf, precision))
    if isinstance(sources, np.ndarray):
        if device_fit is None:  # XLA's resize on a CPU measured 3x slower than Pillow's
            device_fit = not on_cpu()
        if top is not None and device_fit and forward.fits_on_device:
            yield from _array_outputs(clf, forward, sources, batch_size, top)
            return
        sources = list(sources)
    batches = iter_pixel_batches(
        sources, clf.input_size, batch_size, clf.convention,
        rows=lambda n: forward.rows(n, batch_size, len(sources)),
    )  # fmt: skip

    def start(batch: PixelBatch) -> Pending | None:
        if not batch.ok:
            return None
        return (
            forward.start_top_k(batch.pixels, top, batch_size, job=len(sources))
            if top is not None
            else forward.start(batch.pixels, batch_size, len(sources))
        )

    yield from dispatch_ahead(batches, start, _finished)


def is_picture_batch(inputs: Any) -> bool:
    """Whether ``inputs`` is one (N, H, W, 3) uint8 array: pictures of one size, which the
    keras engine fits to the model's input on the device, with no per-picture host work."""
    return (isinstance(inputs, np.ndarray) and inputs.ndim == 4 and inputs.dtype == np.uint8
            and inputs.shape[-1] == 3 and inputs.shape[1] > 0 and inputs.shape[2] > 0)  # fmt: skip


def _array_outputs(
    clf: Classifier, forward: Any, pictures: np.ndarray, batch_size: int, top: int
) -> Iterator[tuple[PixelBatch, Any]]:
    """`iter_outputs` of one (N, H, W, 3) uint8 array on the JAX engine: batches are slices
    of it, fitted (crop, resize) inside the compiled forward (`kerascope.device_fit`)
    unless they are at the input size already and the weights squash."""
    from kerascope.device_fit import device_fit

    as_is = pictures.shape[1:3] == tuple(clf.input_size) and (
        getattr(clf.convention, "resize", "squash") == "squash")  # fmt: skip
    fit = None if as_is else device_fit(pictures.shape[1:], clf.input_size, clf.convention)
    step = max(1, batch_size)
    chunks = (pictures[lo : lo + step] for lo in range(0, len(pictures), step))
    batches = (PixelBatch(c, ["<array>"] * len(c), [None] * len(c)) for c in chunks)

    def start(batch: PixelBatch) -> Pending:
        return forward.start_top_k(batch.pixels, top, batch_size, fit=fit, job=len(pictures))

    yield from dispatch_ahead(batches, start, _finished)


def _finished(batch: PixelBatch, running: Pending | None) -> Iterator[tuple[PixelBatch, Any]]:
    """``(batch, its outputs)``, once they are back (None when nothing of it ran)."""
    if running is None:
        yield batch, None
        return
    out = running.result()
    n = batch.n
    yield batch, ([o[:n] for o in out] if isinstance(out, list) else out[:n])


# A row of the model's output with NaN or infinity: no ranking of it means anything.
NOT_A_NUMBER = ("the model's output for this image is not a number (NaN or infinite): a "
                "damaged model file, or float16 overflowing (try --precision float32)")  # fmt: skip


def classify_sources(
    clf: Classifier,
    sources: Sequence | np.ndarray,
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
    progress=None,
    precision: str | None = None,
    device_fit: bool | None = None,
    group: bool | str | Sequence[str] = False,
) -> Iterator[ImageResult]:
    """One result per source, in order; failures (missing included) carry their reason.

    Pictures are fitted to the input under ``clf.convention`` (a centre crop for zoo weights
    whose published accuracy was measured so), as the weights were evaluated. The top-k
    selection runs with the model (on the device on the keras engine); ``precision`` as in
    `run_precision`; ``device_fit`` as in `iter_outputs`; ``group`` as in `classify`.
    """
    grouped = _groups_of(clf, group)  # checked now, not at the first result
    if grouped is not None:
        return _classify_groups(clf, sources, grouped, top, threshold, batch_size, progress,
                                precision)  # fmt: skip
    return _classify_classes(clf, sources, top, threshold, batch_size, progress, precision,
                             device_fit)  # fmt: skip


def _classify_classes(clf, sources, top, threshold, batch_size, progress, precision, device_fit):
    labels = clf.labels
    k = max(1, min(int(top), len(labels)))
    outputs = iter_outputs(clf, sources, batch_size, k, precision, device_fit)
    for batch, out in outputs:
        values, indices = (out[0].tolist(), out[1].tolist()) if out is not None else ((), ())
        for i, (name, error) in enumerate(zip(batch.names, batch.errors, strict=True)):
            if error is None and not np.isfinite(values[i]).all():
                error = NOT_A_NUMBER
            if error is not None:
                yield ImageResult(name, error=error)
            else:
                yield ImageResult(name, _predictions(values[i], indices[i], labels, threshold))
        if progress is not None:
            progress(batch.n)


def _classify_groups(clf, sources, grouped, top, threshold, batch_size, progress, precision):
    """`classify_sources` with ``group``: whole probability rows, summed per group on the host."""
    from kerascope.zoo.hierarchy import roll_up

    groups, rest = grouped
    for batch, out in iter_outputs(clf, sources, batch_size, None, precision):
        ranked, finite = [], []
        if out is not None:
            rows, columns = roll_up(np.asarray(out), groups, rest)
            ranked = group_top_k(rows, columns, top, threshold)
            finite = np.isfinite(rows).all(axis=1)
        for i, (name, error) in enumerate(zip(batch.names, batch.errors, strict=True)):
            if error is None and not finite[i]:
                error = NOT_A_NUMBER
            yield (
                ImageResult(name, error=error)
                if error is not None
                else ImageResult(name, ranked[i])
            )
        if progress is not None:
            progress(batch.n)


def iter_classify(
    inputs: Source | Iterable[Source],
    model: str | Classifier = "efficientnet_lite0",
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
    precision: str | None = None,
    group: bool | str | Sequence[str] = False,
) -> Iterator[ImageResult]:
    """`classify`, one `ImageResult` at a time as each batch finishes.

    For long jobs: a caller that stops early (Ctrl-C, a deadline) keeps every result it has
    seen, and memory does not grow with the number of images.
    """
    from kerascope.zoo.shared import shared_model

    check_ranking(top, threshold)
    clf = model if isinstance(model, Classifier) else shared_model(model)
    # One uint8 picture batch stays one array: the keras engine fits it on the device.
    sources = inputs if is_picture_batch(inputs) else normalise_inputs(inputs)[0]
    multilabel = clf.extra.get("multilabel")
    stream = classify_sources(clf, sources, clf.num_classes if multilabel else top, threshold,
                              batch_size, precision=precision, group=group)  # fmt: skip
    yield from called_labels(clf, stream)


def check_ranking(top: Any, threshold: Any) -> None:
    """``top`` a whole number of at least 1, ``threshold`` a number from 0 to 1: one
    ValueError naming the argument (top=0 gave one class, threshold="0.1" a TypeError)."""
    whole_number("top", top, 1)  # a ConfigError, which is a ValueError
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not (0.0 <= threshold <= 1.0)
    ):
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")


def called_labels(clf: Classifier, results: Iterable[ImageResult]) -> Iterator[ImageResult]:
    """``results`` as given, or for a multi-label run, each with the labels at or above their
    own thresholds (tuned on validation: ``multilabel.json``), which may be several or none:
    the answer ``classify --model RUN`` prints (the API gave every label, ranked)."""
    multilabel = clf.extra.get("multilabel")
    if not multilabel:
        yield from results
        return
    from kerascope.zoo.sigmoid_heads import called

    for r in results:
        if r.ok:
            r.predictions = called(r.predictions, multilabel["thresholds"])
        yield r


def classify(
    inputs: Source | Iterable[Source],
    model: str | Classifier = "efficientnet_lite0",
    top: int = 5,
    threshold: float = 0.0,
    batch_size: int = 32,
    precision: str | None = None,
    group: bool | str | Sequence[str] = False,
) -> list[ImageResult]:
    """Classify images given as paths, folders, globs, RGB arrays or PIL Images.

    Returns one `ImageResult` per image, in input order (folders and globs in their expansion
    order); missing and unreadable inputs come back at their place with ``error`` set instead
    of raising, so one bad file never loses the rest of the batch. `iter_classify` yields the
    same results as they are computed.

    ``inputs`` may be one (N, H, W, 3) uint8 array: on a GPU its batches go to the device as
    slices of it and are fitted to the model's input there, in the compiled forward (crop and
    resize as `kerascope.images.fit` does, within a few grey levels of Pillow's;
    `kerascope.device_fit`); on a CPU the decode threads fit them.

    ``precision``: ``"auto"`` (bfloat16 mixed precision on GPUs that compute it natively,
    float32 elsewhere), ``"float32"``, ``"bfloat16"`` or ``"float16"``; default the one
    `load_model` was given, else ``KERASCOPE_PRECISION``, else auto. Reduced precision runs on
    the keras engine (`kerascope.inference`).

    ``group`` (ImageNet-1k models): ``True`` ranks groups instead of classes: the curated
    `kerascope.zoo.hierarchy.basic_groups` (cat, dog, bird, car, ...), each the sum of the
    probabilities of its ImageNet descendants, with every class in none of them standing for
    itself; or names (``"cat,dog"`` or a list: any WordNet ancestor name or wnid) to rank just
    those groups. A group's `Prediction` has its wnid and name, and index -1.

    Example:
        >>> results = kerascope.classify("photos/")
        >>> results[0].predictions[0].name
        'tabby'
        >>> kerascope.classify(batch_uint8, batch_size=256, precision="bfloat16")  # doctest: +SKIP
        >>> kerascope.classify("chelsea.png", group=True)[0].predictions[0].name
        'cat'
    """
    return list(iter_classify(inputs, model, top, threshold, batch_size, precision, group))
