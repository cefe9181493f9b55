"""The ONNX graph under construction and the helpers every layer converter shares.

Rank-4 values are kept NCHW inside the graph (what onnxruntime's convolution kernels want), so
helpers here translate Keras (NHWC) axes and constants to the stored layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascope.errors import KerascopeError

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
_INT_MAX = np.iinfo(np.int64).max
# Serialized Keras activation name -> the ONNX op computing the same function.
_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "elu": "Elu", "selu": "Selu"}
_SIMPLE |= {"softplus": "Softplus", "softsign": "Softsign", "exponential": "Exp"}
_SIMPLE |= {"hard_silu": "HardSwish", "hard_swish": "HardSwish"}
_ACTIVATIONS = {*_SIMPLE, "linear", "relu6", "leaky_relu", "hard_sigmoid", "swish", "silu"}
_ACTIVATIONS |= {"gelu", "softmax", "log_softmax"}
# Converters by Keras class name ("ops.Add" for keras.ops called on symbolic tensors).
_CONVERTERS: dict[str, Callable] = {}


class UnsupportedLayerError(KerascopeError, ValueError):
    """A layer (or model) that :func:`keras_to_onnx` cannot express; names the layer and class."""

    def __init__(self, layer: Any, reason: str = "no ONNX conversion for this layer class"):
        self.layer_name = getattr(layer, "name", str(layer))
        self.layer_class = type(layer).__name__
        super().__init__(
            f"cannot convert layer {self.layer_name!r} ({self.layer_class}) to ONNX: {reason}"
        )


@dataclass
class _Value:
    """An ONNX value and the Keras shape it stands for (rank-4 values are stored NCHW)."""

    name: str
    shape: tuple


class _Graph:
    """Collects ONNX nodes and numpy initializers under fresh names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self._count = 0
        self._scalars: dict[float, str] = {}

    def const(self, array: Any, dtype: Any = np.float32) -> str:
        self._count += 1
        name = f"{'w' if dtype == np.float32 else 'i'}/{self._count}"  # "/": not in Keras names
        self.inits[name] = np.ascontiguousarray(np.asarray(array, dtype))
        return name

    def scalar(self, value: float) -> str:
        """A shared float32 scalar (Clip bounds and the like)."""
        if float(value) not in self._scalars:
            self._scalars[float(value)] = self.const(value)
        return self._scalars[float(value)]

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        self._count += 1
        output = output or f"{op_type}/{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _np(variable: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def _activation(g: _Graph, name: str, x: str, rank: int) -> str:
    """Emit the activation ``name`` (a serialized Keras name) on value ``x``."""
    if name == "linear":
        return x
    if name in _SIMPLE:
        return g.op(_SIMPLE[name], [x])
    if name == "relu6":
        return g.op("Clip", [x, g.scalar(0.0), g.scalar(6.0)])
    if name == "leaky_relu":
        return g.op("LeakyRelu", [x], alpha=0.2)
    if name == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6
        return g.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    if name in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "gelu":  # exact (erf) form, Keras's default; onnxruntime fuses it into Gelu
        erf = g.op("Erf", [g.op("Mul", [x, g.scalar(1.0 / math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [erf, g.scalar(1.0)])])
    op_type = "Softmax" if name == "softmax" else "LogSoftmax"
    return g.op(op_type, [x], axis=1 if rank == 4 else -1)


def _axis(axis: int, rank: int) -> int:
    """A Keras (NHWC) axis as the axis of the stored value (NCHW when rank 4)."""
    axis %= rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def _broadcast(c: Any, rank: int) -> np.ndarray:
    """A constant that broadcasts against a Keras-shaped tensor, laid out like the stored value."""
    c = np.asarray(c, np.float32)
    if c.size == 1:
        return c.reshape(())
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return c.transpose(TO_NCHW) if rank == 4 else c


def _keras_order(g: _Graph, v: _Value) -> str:
    """``v`` in Keras's (NHWC) element order, for Flatten/Reshape; free when H = W = 1."""
    if len(v.shape) != 4 or v.shape[1:3] == (1, 1):
        return v.name
    return g.op("Transpose", [v.name], perm=list(TO_NHWC))


def _same_pads(hw: tuple, kernel: tuple, strides: tuple, dilation: tuple) -> list[int] | None:
    """TF/Keras "same" padding (the odd pixel at the end), or None when a size is unknown.

    Explicit pads rather than ``auto_pad``: onnxruntime then fuses and plans with static pads.
    """
    before, after = [], []
    for n, k, s, d in zip(hw, kernel, strides, dilation, strict=True):
        k = (k - 1) * d + 1
        if n is None and s != 1:
            return None
        total = k - 1 if n is None else max((math.ceil(n / s) - 1) * s + k - n, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


def _window(layer: Any, x: _Value, kernel: tuple, dilation: tuple = (1, 1)) -> dict:
    strides = tuple(layer.strides)
    attrs: dict = {"kernel_shape": list(kernel), "strides": list(strides)}
    if layer.padding == "same":
        pads = _same_pads(x.shape[1:3], kernel, strides, dilation)
        attrs.update({"pads": pads} if pads else {"auto_pad": "SAME_UPPER"})  # same as TF
    return attrs


def _conv(g: _Graph, x: _Value, layer: Any, w: np.ndarray, group: int, bias: bool) -> str:
    """ONNX Conv with an OIHW kernel and the layer's strides, padding and dilation."""
    dilation = tuple(layer.dilation_rate)
    inputs = [x.name, g.const(w)] + ([g.const(_np(layer.bias))] if bias else [])
    attrs = _window(layer, x, w.shape[2:], dilation)
    return g.op("Conv", inputs, group=group, dilations=list(dilation), **attrs)


def _converts(*names: str) -> Callable:
    """Register a converter ``(graph, layer, input values, filled-in call args) -> output``."""

    def register(fn: Callable) -> Callable:
        _CONVERTERS.update(dict.fromkeys(names, fn))
        return fn

    return register


def _key(op: Any) -> str:
    """The registry key of ``op``'s exact class; subclasses may change ``call``: not trusted."""
    return _class_key(type(op))


def _class_key(cls: type) -> str:
    """`_key` of an instance of ``cls``: bare for Keras's own layers, else module-qualified."""
    module, name = cls.__module__, cls.__name__
    if module == "keras.src.ops.numpy":
        return f"ops.{name}"
    return name if module.startswith("keras.src.layers.") else f"{module}.{name}"
