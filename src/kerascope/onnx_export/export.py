"""Convert Keras 3 functional image models to ONNX, for fast CPU inference with onnxruntime.

Why: on CPU, onnxruntime runs EfficientNet-Lite0 ~20x faster than Keras on JAX or torch, and
Keras's own ``model.export(format="onnx")`` needs TensorFlow or torch. The Keras model stays the
source of truth; this module writes an equivalent ONNX graph directly from its layers.

The walk (this module) mirrors ``Functional._run_through_graph``: nodes by decreasing depth, each
``KerasTensor`` mapped to an ONNX value. Rank-4 values are kept NCHW inside the graph (what
onnxruntime's convolution kernels want): the NHWC input is transposed once, 4-D outputs are
transposed back, and Flatten/Reshape restore Keras's element order first. Convolution padding is
explicit (TF's asymmetric "same"), and BatchNormalization/ZeroPadding2D stay separate ops that
onnxruntime's basic graph optimizations fold into the adjacent Conv (ConvBNFusion, PadFusion),
so the optimized graph is as lean as one exported from PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kerascope.onnx_export import layers as _layers  # noqa: F401  (registers the converters)
from kerascope.onnx_export.graph import (
    _ACTIVATIONS,
    _CONVERTERS,
    TO_NCHW,
    TO_NHWC,
    UnsupportedLayerError,
    _activation,
    _Graph,
    _key,
    _Value,
)

_RESAMPLE = ("nearest", "bilinear")
# Part of the key of cached graphs (onnx_export.cache): bump it whenever a change here or in
# graph.py / layers.py changes the ONNX graph written for some model.
CONVERTER_VERSION = "1"


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
    if _key(layer) in ("UpSampling2D", "Resizing") and layer.interpolation not in _RESAMPLE:
        raise UnsupportedLayerError(layer, f"interpolation {layer.interpolation!r}")
    if isinstance(layer, keras.layers.Resizing):
        for option in ("crop_to_aspect_ratio", "pad_to_aspect_ratio", "antialias"):
            if getattr(layer, option):
                raise UnsupportedLayerError(layer, f"Resizing with {option}=True")
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
    graph_outputs, names = [], {t.name for t in fn.inputs}  # an output may be an input too
    for t, v in zip(fn.outputs, outs, strict=True):
        base = name = t._keras_history.operation.name
        i = len(graph_outputs)
        while name in names:  # one tensor twice, two outputs of one layer, an input as output
            name, i = f"{base}_{i}", i + 1
        names.add(name)
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
