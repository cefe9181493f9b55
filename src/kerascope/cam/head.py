"""The classifier head behind a CAM target layer: which final activation leaves a per-class
score (the logit) separable, and whether the layer reaches it only through GAP -> Dense (then
the class score's gradient is analytic: `kerascope.cam.base`).

A binary run (`kerascope.zoo.sigmoid_heads.two_class_view`) ends in one sigmoid unit read as
``[1 - p, p]`` by a fixed linear layer. Its class scores are the sigmoid's logit signed by
class, ``[-z, z]`` (``sigmoid(-z) = 1 - p``): the probabilities' gradient vanishes once float32
rounds ``p`` to 1, which left every gradient map of a confident binary run empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Final activations that leave a per-class score (the logit) separable from the output.
_SEPARABLE = ("softmax", "sigmoid", "linear")
_PASS_THROUGH = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "Identity")


def _producer(tensor: Any) -> tuple[Any, Any]:
    op, node_index, _ = tensor._keras_history
    return op, op._inbound_nodes[node_index]


def _activation_name(op: Any) -> str | None:
    import keras

    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    fn = getattr(op, "activation", None)
    return getattr(fn, "__name__", None) if isinstance(op, keras.layers.Activation) else None


@dataclass
class Head:
    """How the class score is read off the graph, and the Dense weights when it is analytic.

    ``kind``: ``dense`` (score = ``h @ kernel + bias``: a Dense with its softmax or sigmoid
    built in; a binary run's one unit as two, ``[-z, z]``),
    ``logits`` (``h`` is the logits, a separate softmax follows) or ``output`` (no separable
    activation: the score is the output itself).
    """

    score_input: Any  # the tensor h the score is computed from
    kind: str
    activation: str = "linear"
    kernel: np.ndarray | None = None  # (K, classes), set for kind "dense" and analytic heads
    bias: np.ndarray | None = None
    analytic: bool = False  # features -> GAP -> (Dropout) -> Dense: gradient in closed form


def analyse_head(features: Any, output: Any) -> Head:
    """Walk back from the output to find the logits and whether the head is GAP + Dense."""
    import keras

    from kerascope.zoo.sigmoid_heads import is_two_class_view

    op, node = _producer(output)
    if is_two_class_view(op):
        return _two_classes(analyse_head(features, node.input_tensors[0])) or Head(output, "output")
    act = _activation_name(op)
    dense = None
    if act in _SEPARABLE:
        head = Head(node.input_tensors[0], "logits", act)
        op, node = _producer(head.score_input)
        if isinstance(op, keras.layers.Dense) and op.activation.__name__ == "linear":
            dense = op
    elif isinstance(op, keras.layers.Dense) and op.activation.__name__ in _SEPARABLE:
        dense = op
        head = Head(node.input_tensors[0], "dense", op.activation.__name__)
    else:
        return Head(output, "output")
    if dense is None:
        return head
    head.kernel = keras.ops.convert_to_numpy(dense.kernel).astype(np.float32)
    bias = dense.bias if dense.use_bias else np.zeros(dense.units)
    head.bias = keras.ops.convert_to_numpy(bias).astype(np.float32)
    t = node.input_tensors[0]
    op, node = _producer(t)
    while type(op).__name__ in _PASS_THROUGH:
        t = node.input_tensors[0]
        op, node = _producer(t)
    head.analytic = (
        isinstance(op, keras.layers.GlobalAveragePooling2D)
        and not op.keepdims
        and op.data_format == "channels_last"
        and node.input_tensors[0] is features
    )
    return head


_SIGNS = np.array([-1.0, 1.0], np.float32)  # class 0 scores -z, class 1 scores z


def _two_classes(unit: Head) -> Head | None:
    """The one sigmoid unit's head with its logit signed per class: a Dense(2) with kernel
    ``[-W, W]`` and bias ``[-b, b]`` and the sigmoid, so probabilities stay ``[1 - p, p]``,
    top-1 stays ``p > 0.5`` and a GAP + Dense head stays analytic (CAM included). None when
    the unit has no separable sigmoid (the output is then read as it is)."""
    if unit.kind == "output" or unit.activation != "sigmoid":
        return None
    if unit.kernel is None:  # a sigmoid on a logit no Dense computes: sign that logit
        return Head(unit.score_input, "dense", "sigmoid", _SIGNS[None, :], np.zeros(2, np.float32))
    h = unit.score_input
    if unit.kind == "logits":  # Dense(1) then a sigmoid layer: score from the Dense's input
        h = _producer(unit.score_input)[1].input_tensors[0]
    kernel, bias = unit.kernel * _SIGNS, unit.bias * _SIGNS
    return Head(h, "dense", "sigmoid", kernel, bias, analytic=unit.analytic)


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Probabilities from logits under the head's final activation (linear: the logits)."""
    if activation == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if activation == "sigmoid":  # exp of -|x| only: a binary run's logit of -100 overflowed
        e = np.exp(-np.abs(logits))
        return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return logits
