"""The classifier head behind a CAM target layer: which final activation leaves a per-class
score (the logit) separable, and whether the layer reaches it only through GAP -> Dense (then
the class score's gradient is analytic: `kerascope.cam.base`)."""

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

    ``kind``: ``dense`` (score = ``h @ kernel + bias``: a Dense with its softmax built in),
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

    op, node = _producer(output)
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


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Probabilities from logits under the head's final activation (linear: the logits)."""
    if activation == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits
