"""Convert Keras 3 functional image models to ONNX, for fast CPU inference with onnxruntime.

Why: on CPU, onnxruntime runs EfficientNet-Lite0 ~20x faster than Keras on JAX or torch, and
Keras's own ``model.export(format="onnx")`` needs TensorFlow or torch. The Keras model stays the
source of truth; this module writes an equivalent ONNX graph directly from its layers.

The walk mirrors ``Functional._run_through_graph``: nodes by decreasing depth, each
``KerasTensor`` mapped to an ONNX value. Rank-4 values are kept NCHW inside the graph (what
onnxruntime's convolution kernels want): the NHWC input is transposed once, 4-D outputs are
transposed back, and Flatten/Reshape restore Keras's element order first. Convolution padding is
explicit (TF's asymmetric "same"), and BatchNormalization/ZeroPadding2D stay separate ops that
onnxruntime's basic graph optimizations fold into the adjacent Conv (ConvBNFusion, PadFusion),
so the optimized graph is as lean as one exported from PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class UnsupportedLayerError(ValueError):
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


@_converts("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
def _convolution(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    kind = type(layer).__name__
    if kind == "Conv2D":  # (kh, kw, I/g, O) -> (O, I/g, kh, kw)
        kernel = _np(layer.kernel).transpose(3, 2, 0, 1)
        return _conv(g, xs[0], layer, kernel, layer.groups, layer.use_bias)
    depthwise = _np(layer.kernel if kind == "DepthwiseConv2D" else layer.depthwise_kernel)
    kh, kw, c, m = depthwise.shape  # output channel c * m + j, as Keras reshapes the kernel
    kernel = depthwise.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    if kind == "DepthwiseConv2D":
        return _conv(g, xs[0], layer, kernel, c, layer.use_bias)
    y = _conv(g, xs[0], layer, kernel, c, False)
    point = g.const(_np(layer.pointwise_kernel).transpose(3, 2, 0, 1))
    bias = [g.const(_np(layer.bias))] if layer.use_bias else []
    return g.op("Conv", [y, point, *bias], kernel_shape=[1, 1])


@_converts("Dense")
def _dense(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    x, kernel, rank = xs[0], _np(layer.kernel), len(xs[0].shape)
    bias = [g.const(_np(layer.bias))] if layer.use_bias else []
    if rank == 2:
        return g.op("Gemm", [x.name, g.const(kernel), *bias])
    if rank == 4:  # Dense on the channel axis is a 1x1 convolution
        return g.op("Conv", [x.name, g.const(kernel.T[:, :, None, None]), *bias])
    y = g.op("MatMul", [x.name, g.const(kernel)])
    return g.op("Add", [y, *bias]) if bias else y


@_converts("BatchNormalization")
def _batch_norm(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    x, rank = xs[0], len(xs[0].shape)
    mean, var = _np(layer.moving_mean), _np(layer.moving_variance)
    gamma = _np(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = _np(layer.beta) if layer.center else np.zeros_like(mean)
    axis = _axis(layer.axis, rank)
    if axis == 1:  # the ONNX op: onnxruntime folds it into a preceding Conv
        inputs = [x.name] + [g.const(a) for a in (gamma, beta, mean, var)]
        return g.op("BatchNormalization", inputs, epsilon=float(layer.epsilon))
    scale = gamma / np.sqrt(var + layer.epsilon)
    shape = [-1 if i == axis else 1 for i in range(rank)]
    y = g.op("Mul", [x.name, g.const(scale.reshape(shape))])
    return g.op("Add", [y, g.const((beta - mean * scale).reshape(shape))])


def _affine(g: _Graph, x: _Value, scale: Any, offset: Any) -> str:
    """``x * scale + offset`` with Keras broadcasting; skips no-op halves."""
    y, rank = x.name, len(x.shape)
    if not np.all(np.asarray(scale) == 1):
        y = g.op("Mul", [y, g.const(_broadcast(scale, rank))])
    if not np.all(np.asarray(offset) == 0):
        y = g.op("Add", [y, g.const(_broadcast(offset, rank))])
    return y


@_converts("Rescaling", "Normalization")
def _rescaling(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    import keras

    if type(layer).__name__ == "Rescaling":
        return _affine(g, xs[0], layer.scale, layer.offset)
    mean = _np(layer.mean)
    std = np.maximum(np.sqrt(_np(layer.variance)), keras.backend.epsilon())
    if layer.invert:
        return _affine(g, xs[0], std, mean)
    return _affine(g, xs[0], 1.0 / std, -mean / std)


@_converts("ReLU", "LeakyReLU")
def _relu(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    x, slope, top = xs[0].name, float(layer.negative_slope), getattr(layer, "max_value", None)
    y = g.op("LeakyRelu", [x], alpha=slope) if slope else None
    if top is None:
        return y or g.op("Relu", [x])
    return g.op("Clip", [y or x, "" if slope else g.scalar(0.0), g.scalar(float(top))])


@_converts("Softmax")
def _softmax(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    return g.op("Softmax", [xs[0].name], axis=_axis(axis, len(xs[0].shape)))


def _elementwise(op_type: str, mean: bool = False) -> Callable:
    """Merge layers (inputs in a list) and ``keras.ops`` arithmetic (``x + 3.0``, MobileNetV3)."""

    def convert(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
        operands = list(args[:2]) if _key(layer).startswith("ops.") else list(args[0])
        rank = len(xs[0].shape)
        if any(len(x.shape) != rank for x in xs):
            raise UnsupportedLayerError(layer, "operands of different ranks")
        names = [
            a.name if isinstance(a, _Value) else g.const(_broadcast(a, rank)) for a in operands
        ]
        y = names[0]
        for name in names[1:]:
            y = g.op(op_type, [y, name])
        return g.op("Mul", [y, g.scalar(1.0 / len(names))]) if mean else y

    return convert


_MERGES = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Maximum": "Max", "Minimum": "Min"}
for _keras, _onnx in _MERGES.items():
    _CONVERTERS[_keras] = _CONVERTERS[f"ops.{_keras}"] = _elementwise(_onnx)
_CONVERTERS["Average"] = _elementwise("Add", mean=True)
_CONVERTERS["ops.Divide"] = _CONVERTERS["ops.TrueDivide"] = _elementwise("Div")


@_converts("Concatenate")
def _concatenate(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    return g.op("Concat", [x.name for x in xs], axis=_axis(layer.axis, len(xs[0].shape)))


@_converts("MaxPooling2D", "AveragePooling2D")
def _pool(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    attrs = _window(layer, xs[0], tuple(layer.pool_size))
    if type(layer).__name__ == "MaxPooling2D":
        return g.op("MaxPool", [xs[0].name], **attrs)
    return g.op("AveragePool", [xs[0].name], count_include_pad=0, **attrs)  # as Keras


@_converts("GlobalAveragePooling2D", "GlobalMaxPooling2D")
def _global_pool(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    op_type = "GlobalMaxPool" if "Max" in type(layer).__name__ else "GlobalAveragePool"
    y = g.op(op_type, [xs[0].name])
    return y if layer.keepdims else g.op("Flatten", [y], axis=1)


@_converts("ZeroPadding2D")
def _zero_padding(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    (top, bottom), (left, right) = layer.padding
    pads = g.const([0, 0, top, left, 0, 0, bottom, right], np.int64)
    return g.op("Pad", [xs[0].name, pads])  # onnxruntime moves it into the next Conv's pads


@_converts("Cropping2D")
def _cropping(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    (top, bottom), (left, right) = layer.cropping
    ends = [-bottom if bottom else _INT_MAX, -right if right else _INT_MAX]
    starts, ends, axes = (g.const(v, np.int64) for v in ([top, left], ends, [2, 3]))
    return g.op("Slice", [xs[0].name, starts, ends, axes])


@_converts("UpSampling2D")
def _upsampling(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    scales = g.const([1.0, 1.0, *layer.size])
    if layer.interpolation == "nearest":  # pixel repetition
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}
        return g.op("Resize", [xs[0].name, "", scales], nearest_mode="floor", **attrs)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    return g.op("Resize", [xs[0].name, "", scales], **attrs)


@_converts("Flatten", "Reshape")
def _reshape(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    target = list(getattr(layer, "target_shape", [-1]))  # Flatten: [-1]
    if len(target) == 3 and tuple(target[:2]) == (1, 1):  # NCHW and NHWC orders coincide
        return g.op("Reshape", [_keras_order(g, xs[0]), g.const([0, target[2], 1, 1], np.int64)])
    y = g.op("Reshape", [_keras_order(g, xs[0]), g.const([0, *target], np.int64)])
    return g.op("Transpose", [y], perm=list(TO_NCHW)) if len(target) == 3 else y


# Identity in inference; Activation's function is applied by _run like any layer's activation.
@_converts("Activation", "Identity", "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout")
@_converts("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
def _identity(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    return xs[0].name


def _key(op: Any) -> str:
    """The registry key of ``op``'s exact class; subclasses may change ``call``: not trusted."""
    module, name = type(op).__module__, type(op).__name__
    if module == "keras.src.ops.numpy":
        return f"ops.{name}"
    return name if module.startswith("keras.src.layers.") else f"{module}.{name}"


def _functional(model: Any) -> Any:
    """The Functional graph behind a Functional or built Sequential model, else None."""
    import keras

    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if hasattr(model, "_nodes_by_depth") else None


def _activation_name(layer: Any) -> str | None:
    """The Keras name of ``layer.activation`` ("linear" if none), None if not a built-in."""
    import keras

    fn = getattr(layer, "activation", None)
    names = {keras.activations.get(name): name for name in sorted(_ACTIVATIONS)}
    return "linear" if fn is None else names.get(fn)


def _check(layer: Any) -> None:
    """Raise UnsupportedLayerError unless ``layer``'s class and config can be converted."""
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return
    if _key(layer) not in _CONVERTERS:
        raise UnsupportedLayerError(layer)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(layer, "only channels_last is supported")
    if _activation_name(layer) is None:
        raise UnsupportedLayerError(layer, f"activation {layer.activation!r}")
    if getattr(layer, "quantization_mode", None):
        raise UnsupportedLayerError(layer, "quantized weights")
    if isinstance(layer, keras.layers.ReLU) and float(layer.threshold) != 0.0:
        raise UnsupportedLayerError(layer, "ReLU threshold != 0")
    if isinstance(layer, keras.layers.Normalization) and layer.mean is None:
        raise UnsupportedLayerError(layer, "Normalization is not adapted")
    if getattr(layer, "interpolation", "nearest") not in ("nearest", "bilinear"):
        raise UnsupportedLayerError(layer, f"interpolation {layer.interpolation!r}")
    axis = getattr(layer, "axis", 0) if isinstance(layer, keras.layers.Softmax) else 0
    if isinstance(axis, list | tuple) and len(axis) != 1:
        raise UnsupportedLayerError(layer, "softmax over several axes")


def _operations(model: Any) -> Iterator[Any]:
    """Every operation of ``model``, nested models expanded; raises for subclassed models."""
    fn = _functional(model)
    if fn is None:
        raise UnsupportedLayerError(model, "only functional and built Sequential models")
    for op in fn.operations:
        if _functional(op) is not None:
            yield from _operations(op)
        else:
            yield op


def supports(model: Any) -> bool:
    """Whether every layer of ``model`` is convertible (cheap: no ONNX graph is built)."""
    try:
        for op in _operations(model):
            _check(op)
    except UnsupportedLayerError:
        return False
    return True


def _run(g: _Graph, fn: Any, inputs: list[_Value]) -> list[_Value]:
    """Emit ``fn``'s graph on ``inputs`` (as ``Functional._run_through_graph`` computes it)."""
    import keras

    values = {id(t): v for t, v in zip(fn.inputs, inputs, strict=True)}
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for node in fn._nodes_by_depth[depth]:
            op = node.operation
            if not op or node.is_input or any(id(t) not in values for t in node.input_tensors):
                continue
            args, _ = node.arguments.fill_in(values)
            xs = [a for a in keras.tree.flatten(args) if isinstance(a, _Value)]
            if _functional(op) is not None:
                outs = _run(g, _functional(op), xs)
            else:
                _check(op)
                shape = tuple(node.outputs[0].shape)
                name = _CONVERTERS[_key(op)](g, op, xs, args)
                name = _activation(g, _activation_name(op), name, len(shape))
                outs = [_Value(name, shape)]
            for t, v in zip(node.outputs, outs, strict=True):
                values[id(t)] = v
    return [values[id(t)] for t in fn.outputs]


def keras_to_onnx(model: Any, opset: int = 17, batch_dim: str = "batch") -> bytes:
    """Serialize an ONNX graph that computes ``model(x)`` in inference mode.

    Args:
        model: a Keras 3 Functional or built Sequential model; nested models are inlined.
        opset: ONNX opset (14 or newer: HardSwish needs 14).
        batch_dim: the name of the dynamic batch dimension of inputs and outputs.

    Returns:
        A serialized ``ModelProto``. Inputs are float32 in the Keras layout (NHWC images) and
        outputs in the Keras layout too, named after the model's input and output layers.

    Raises:
        UnsupportedLayerError: a layer has no conversion (it is named in the message).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if opset < 14:
        raise ValueError(f"opset {opset} is too old; 14 or newer is needed")
    for op in _operations(model):
        _check(op)
    fn = _functional(model)
    g = _Graph()
    graph_inputs, values = [], []
    for t in fn.inputs:
        shape = tuple(t.shape)
        dims = [batch_dim, *shape[1:]]
        graph_inputs.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, dims))
        name = g.op("Transpose", [t.name], perm=list(TO_NCHW)) if len(shape) == 4 else t.name
        values.append(_Value(name, shape))
    outs = _run(g, fn, values)
    graph_outputs, names = [], []
    for t, v in zip(fn.outputs, outs, strict=True):
        name = t._keras_history.operation.name
        name = name if name not in names else f"{name}_{len(names)}"
        names.append(name)
        if len(v.shape) == 4:
            g.op("Transpose", [v.name], output=name, perm=list(TO_NHWC))
        else:
            g.op("Identity", [v.name], output=name)
        dims = [batch_dim, *v.shape[1:]]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    inits = [numpy_helper.from_array(a, k) for k, a in g.inits.items()]
    graph = helper.make_graph(g.nodes, model.name, graph_inputs, graph_outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="kerascope")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
