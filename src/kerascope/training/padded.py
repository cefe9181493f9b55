"""Padded training batches: their sample weights, loss and accuracy.

Every training and validation batch has the full batch shape, the last partial one padded
with weight-0 rows, so a stage's jitted step compiles once (not again for the last batch).
Both trainers feed such batches: the whole graph (`kerascope.training.whole.DeviceFeed`) and
the split trainer (`kerascope.training.split.PrefixSequence`).

* Each step trains on the mean over its batch's real rows, as plain Keras does with an
  unpadded last batch: a real row weighs ``batch / real`` times its class weight (Keras divides
  the weighted sum by all ``batch`` rows), padding 0 (:func:`sample_weights`). Before, every
  real row weighed ``steps * batch / images``, which scaled each full batch's gradient (x1.94
  for 33 images in batches of 32) and the last batch's differently: SGD took steps of the
  wrong size.
* The ``loss`` logged is the exact mean over the epoch's real images: :class:`PaddedLoss`
  weighs each batch's loss by its real rows (Keras weighs it by the batch's rows, padding
  included, which would overweigh a last batch of one image 32 times).
* ``accuracy`` counts each real row once (:class:`RealAccuracy` and its kin).
"""

from __future__ import annotations

from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.utils import tracking  # noqa: E402


def row_weights(images: Any, class_weight: dict[int, float] | None) -> np.ndarray:
    """Per class of ``images`` (a :class:`kerascope.data.loader.FolderSequence`), the weight of
    a real row before :func:`sample_weights` scales it to its batch: the class weight (1
    without)."""
    weights = np.ones(len(images.classes), np.float32)
    for index, value in (class_weight or {}).items():
        weights[int(index)] *= float(value)
    return weights


def sample_weights(labels: np.ndarray, real: int, row_weight: np.ndarray) -> np.ndarray:
    """A padded batch's sample weights: each of its ``real`` rows its class's weight times
    ``batch / real`` (so the batch's loss is the mean over its real rows), padding 0."""
    weights = row_weight[labels].astype(np.float32) * np.float32(len(labels) / real)
    weights[real:] = 0.0
    return weights


class _RealRowsMean(keras.metrics.Mean):
    """The ``loss`` tracker of a :class:`PaddedLoss` model: each batch's loss weighted by its
    real rows, added by ``compute_loss``. Keras's own update after each step (weighted by
    the batch's rows, padding included) is ignored."""

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        """Keras's call: ignored (see the class doc)."""

    def add(self, loss: Any, rows: Any) -> None:
        super().update_state(loss, sample_weight=rows)


class PaddedLoss:
    """Mixin for a ``keras.Model`` trained and validated on padded batches (see the module doc):
    its logged ``loss`` weighs each batch by its real rows (sample weight above 0), so an
    epoch's loss is the exact mean over its images. Without sample weights every row is real,
    as in Keras."""

    @tracking.no_automatic_dependency_tracking  # as Keras assigns its tracker: not in `_metrics`
    def compile(self, *args: Any, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        self._loss_tracker = _RealRowsMean(name="loss")
        if not any(m is self._loss_tracker for m in self.metrics):  # a Keras that renamed it
            raise RuntimeError(f"Keras {keras.__version__} no longer reports the trainer's "
                               "_loss_tracker: kerascope.training.padded needs updating (the "
                               "logged loss would count padded rows)")  # fmt: skip

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None,
                     sample_weight: Any = None, training: bool = True) -> Any:  # fmt: skip
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if sample_weight is None:
            rows = keras.ops.shape(keras.tree.flatten(y_pred)[0])[0]
        else:
            rows = keras.ops.sum(keras.ops.cast(keras.ops.greater(sample_weight, 0), "float32"))
        if isinstance(self._loss_tracker, _RealRowsMean):
            self._loss_tracker.add(loss, rows)
        return loss


class _RealRows:
    """Counts the real rows of padded batches: a row counts when its sample weight is above 0,
    and counts once whatever its weight (Keras's unweighted ``accuracy`` would count the
    padding; a weighted one would count class weights and the ``batch / real`` scale)."""

    def __init__(self, name: str = "accuracy", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            sample_weight = keras.ops.cast(keras.ops.greater(sample_weight, 0), "float32")
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)


class RealAccuracy(_RealRows, keras.metrics.SparseCategoricalAccuracy):
    """``accuracy`` of hard labels over the real rows of padded batches (`_RealRows`)."""


class SoftRealAccuracy(_RealRows, keras.metrics.CategoricalAccuracy):
    """``accuracy`` against the largest share of soft targets (label smoothing, mixup,
    cutmix), over the real rows of padded batches. With mixup the largest share is the
    image's own label when lambda > 1/2, the partner's otherwise."""


class RealBinaryAccuracy(_RealRows, keras.metrics.BinaryAccuracy):
    """``accuracy`` of a sigmoid head (binary, or each label of a multi-label head, at 0.5)
    over the real rows of padded batches (`_RealRows`)."""
