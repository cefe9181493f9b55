"""Runs whose network ends in sigmoid units (or in logits), read like any classifier.

* A binary run (``train --binary``) saves the seed's Dense(1, sigmoid): the probability of
  class 1. Loaded, it gets a fixed two-unit layer on top giving ``[1 - p, p]``, so every
  reader of ``(N, classes)`` probability rows (classify, evaluate, predict, validate, TTA,
  serve) sees two classes. ``model.keras`` itself keeps the one unit.
* A multi-label run saves ``multilabel.json`` (its labels and the per-label thresholds tuned
  on validation); the loaded classifier carries them in ``Classifier.extra["multilabel"]``, and
  each sigmoid output is a label's own probability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MULTILABEL_NAME = "multilabel.json"
TWO_CLASSES = "two_classes"  # the layer `two_class_view` adds: [1 - p, p], probabilities


def is_binary_sigmoid(model: Any) -> bool:
    """One sigmoid unit at the output (the seed's binary head)."""
    import keras

    out = model.outputs[0]
    layer = out._keras_history.operation
    activation = getattr(layer, "activation", None)
    return tuple(out.shape)[1:] == (1,) and activation is keras.activations.sigmoid


def output_activation(model: Any) -> str | None:
    """The name of the activation that makes the output: ``softmax``, ``sigmoid``, ``linear``
    (no activation: logits), another name, or None when the last operation is none of those
    layers (a custom op: read as it is)."""
    import keras

    layer = model.outputs[0]._keras_history.operation
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D | keras.layers.Activation):
        return getattr(fn, "__name__", None)
    return None


def as_probabilities(model: Any) -> tuple[Any, str | None]:
    """``model`` with probabilities out, and what was done, for a model that ends in logits
    (a Dense without activation, trained ``from_logits=True``): its outputs were printed as
    percentages (a logit of 4 as 400%, a negative one hidden). Several outputs get a softmax,
    one a sigmoid (the probability of class 1, then read as two classes)."""
    import keras

    last = model.outputs[0]._keras_history.operation
    if output_activation(model) != "linear" or is_two_class_view(last):
        return model, None  # a binary run's [1 - p, p] (exported with it) is probabilities
    one = tuple(model.outputs[0].shape)[1:] == (1,)
    activation = keras.layers.Activation("sigmoid", name="kerascope_sigmoid") if one else (
        keras.layers.Softmax(name="kerascope_softmax"))  # fmt: skip
    said = ("its sigmoid is the probability of class 1" if one
            else "their softmax gives the probabilities")  # fmt: skip
    wrapped = keras.Model(model.inputs, activation(model.outputs[0]), name=model.name)
    return wrapped, f"the model's last layer has no activation: its outputs are logits, {said}"


def is_two_class_view(layer: Any) -> bool:
    """`two_class_view`'s layer: its name and its fixed weights [[-1, 1]], [1, 0] (explain
    reads the sigmoid's logit through it: `kerascope.cam.head`)."""
    import numpy as np

    if getattr(layer, "name", None) != TWO_CLASSES or len(layer.get_weights()) != 2:
        return False
    kernel, bias = layer.get_weights()
    return np.array_equal(kernel, [[-1.0, 1.0]]) and np.array_equal(bias, [1.0, 0.0])


def two_class_view(model: Any) -> Any:
    """``model`` with outputs ``[1 - p, p]``: a Dense(2) on the sigmoid, weights [[-1, 1]],
    bias [1, 0] (exact, and a layer every engine runs), sharing the model's layers."""
    import keras
    import numpy as np

    layer = keras.layers.Dense(2, dtype="float32", name=TWO_CLASSES, trainable=False)
    outputs = layer(model.outputs[0])
    layer.set_weights([np.array([[-1.0, 1.0]], np.float32), np.array([1.0, 0.0], np.float32)])
    return keras.Model(model.inputs, outputs, name=model.name)


def read_multilabel(run_dir: str | Path) -> dict[str, Any] | None:
    """``multilabel.json`` of a run (labels, thresholds, its CSV and split), or None for other
    runs."""
    path = Path(run_dir) / MULTILABEL_NAME
    if not path.is_file():
        return None
    from kerascope.errors import RunError

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        thresholds = [float(t) for t in record["thresholds"]]
        labels = [str(n) for n in record["labels"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(f"'{path}' is damaged ({type(exc).__name__}: {exc}); train the "
                             "run again or restore the file") from None  # fmt: skip
    if len(thresholds) != len(labels):
        raise RunError(f"'{path}' lists {len(labels)} labels but {len(thresholds)} thresholds; "
                       "train the run again or restore the file")  # fmt: skip
    return {**record, "labels": labels, "thresholds": thresholds}


def called(predictions: list, thresholds: list[float]) -> list:
    """The predictions (any objects with ``index`` and ``probability``) whose probability
    reaches their label's threshold: a multi-label run's answer for one picture, which may
    name several labels, or none."""
    return [p for p in predictions if p.probability >= thresholds[p.index]]
