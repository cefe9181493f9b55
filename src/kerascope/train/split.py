"""Split training: the frozen prefix of a network runs on the inference engine, only the
trainable suffix trains in Keras.

Why: on a CPU the frozen part of a transfer or fine-tuning model is 80-100 % of every training
step's forward cost, and onnxruntime runs it ~20x faster than Keras (DESIGN.md). A stage's
network is cut where trainable layers begin (:func:`split_model`): the *prefix* (augmented
pixels in, the tensors that cross the cut out) is compiled once per stage by
:func:`kerascope.inference.compiled`; the *suffix* (those tensors in, probabilities out) is a
Keras model built from the very same layer objects, so training it updates the full model's
weights and ``model.keras`` is saved from the full model as before. The cut is exact: with the
same batch, one step on the suffix gives the same weights as one step on the whole graph.

Augmentation stays real: the same random transformations run on the uint8 batch before the
prefix (``kerascope.data.affine``: Pillow, since XLA's CPU resampling is slower than the whole
network), seeded from ``(seed, epoch, batch)`` so every epoch sees new views and a resumed run
sees the same ones. Without augmentation (validation data, ``augment=False``) the prefix runs once
per stage and its outputs are reused every epoch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.loader import FolderSequence  # noqa: E402

# Prefix outputs above this size are kept in a memory-mapped file, not in RAM.
IN_MEMORY_BYTES = 1 << 30


@dataclass
class SplitModel:
    """A stage's network cut at its freeze boundary.

    Attributes:
        prefix: frozen part, augmented pixels (0..255) in, boundary tensors out.
        suffix: trainable part, boundary tensors in, probabilities out; shares its layers
            (and so its variables) with the full model.
        cut: name of the first backbone layer in the suffix (None: the head only).
    """

    prefix: Any
    suffix: Any
    cut: str | None


def _first_trainable(layers: list) -> int | None:
    """Index of the first layer with trainable weights, None when every layer is frozen."""
    for i, layer in enumerate(layers):
        if layer.trainable_weights:
            return i
    return None


def _boundary(backbone: Any, start: int) -> list:
    """Tensors made by ``backbone.layers[:start]`` and read by ``backbone.layers[start:]``."""
    before = {id(layer) for layer in backbone.layers[:start]}
    tensors: list = []
    for layer in backbone.layers[start:]:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                made_by = tensor._keras_history.operation
                if id(made_by) in before and not any(tensor is t for t in tensors):
                    tensors.append(tensor)
    return tensors


def _outer_output(model: Any, layer: Any) -> Any:
    """The tensor ``layer`` (a nested model) produces inside ``model``'s graph."""
    for node in layer._inbound_nodes:
        for tensor in node.output_tensors:
            if any(tensor is t for t in _graph_tensors(model)):
                return tensor
    raise ValueError(f"'{layer.name}' is not called inside '{model.name}'")


def _graph_tensors(model: Any) -> list:
    out = []
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            out += list(node.output_tensors)
    return out


def split_model(model: Any) -> SplitModel | None:
    """Cut a backbone recipe's model (Input -> augmentation -> backbone -> head) where its
    trainable layers begin, or None when it has no frozen backbone to cut off.

    The backbone's layers before the first one with trainable weights form the prefix; the
    rest of the backbone and the head form the suffix. Layers past the cut that are frozen
    (BatchNorm in fine-tuning) stay in the suffix, in inference mode, as in the whole graph.
    """
    from kerascope.train.recipes import backbone_of

    backbone = backbone_of(model)
    if backbone is None:
        return None
    start = _first_trainable(backbone.layers)
    if start is not None and start <= 1:
        return None  # everything trains: nothing to run ahead of time
    inner = [backbone.output] if start is None else _boundary(backbone, start)
    prefix = keras.Model(backbone.input, inner, name=f"{backbone.name}_prefix")
    inputs = [keras.Input(shape=t.shape[1:], name=f"boundary_{i}") for i, t in enumerate(inner)]
    if start is None:
        features = inputs[0]
    else:
        body = keras.Model(inner, backbone.output, name=f"{backbone.name}_top")
        features = body(inputs if len(inputs) > 1 else inputs[0])
    head = keras.Model(_outer_output(model, backbone), model.output, name="head")
    suffix = keras.Model(inputs if len(inputs) > 1 else inputs[0], head(features),
                         name=f"{model.name}_suffix")  # fmt: skip
    cut = None if start is None else backbone.layers[start].name
    return SplitModel(prefix, suffix, cut)


class PrefixSequence(keras.utils.PyDataset):
    """``(boundary tensors, labels)`` batches: a :class:`FolderSequence`'s uint8 images,
    augmented, through the compiled prefix.

    Without ``augment`` every image's prefix outputs are computed once (:meth:`precompute`)
    and batches are gathered from them in the wrapped sequence's order, epoch after epoch.
    """

    def __init__(
        self,
        images: FolderSequence,
        forward: Callable[[np.ndarray], Any],
        augment: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
        scratch: str | os.PathLike | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        # Two threads: one batch's augmentation (Pillow, GIL released) overlaps the other's
        # prefix (onnxruntime): measured 2x the img/s of one thread for transfer on 2 cores.
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)
        self.images, self.forward, self.augment = images, forward, augment
        self.scratch = Path(scratch) if scratch else None
        self.outputs: list[np.ndarray] | None = None
        if augment is None:
            self.precompute(progress)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def epoch(self) -> int:
        return self.images.epoch

    def set_epoch(self, epoch: int) -> None:
        self.images.set_epoch(epoch)

    def on_epoch_end(self) -> None:
        self.images.on_epoch_end()

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        rows = self.images.batch_rows(index)
        labels = self.images.labels[rows]
        if self.outputs is not None:
            return _pack([out[rows] for out in self.outputs]), labels
        pixels = self.images.load_rows(rows)
        pixels = self.augment(pixels, self.epoch, index)
        return _pack(_as_list(self.forward(pixels))), labels

    def precompute(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Run every image through the prefix once, in file order."""
        n = len(self.images.paths)
        size = self.images.batch_size
        outputs: list[np.ndarray] | None = None
        for done, begin in enumerate(range(0, n, size), 1):
            rows = np.arange(begin, min(begin + size, n))
            values = _as_list(self.forward(self.images.load_rows(rows)))
            if outputs is None:
                outputs = [self._allocate((n, *v.shape[1:]), v.dtype) for v in values]
            for out, v in zip(outputs, values, strict=True):
                out[rows] = v
            if progress:
                progress(done, len(self.images))
        self.outputs = outputs

    def _allocate(self, shape: tuple, dtype: Any) -> np.ndarray:
        """An array in RAM, or memory-mapped in ``scratch`` when it would be large."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes <= IN_MEMORY_BYTES or self.scratch is None:
            return np.empty(shape, dtype)
        self.scratch.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=self.scratch, suffix=".npy", delete=False)
        handle.close()
        array = np.lib.format.open_memmap(handle.name, mode="w+", dtype=dtype, shape=shape)
        os.unlink(handle.name)  # the mapping keeps the data; nothing is left behind on a crash
        return array


def _as_list(value: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in value] if isinstance(value, list | tuple) else [value]


def _pack(values: list[np.ndarray]) -> Any:
    return values[0] if len(values) == 1 else tuple(values)
