"""Per-layer converters: each emits the ONNX ops computing one Keras layer in inference mode.

A converter takes ``(graph, layer, input values, filled-in call args)`` and returns the output
value's name; the layer's built-in activation is applied afterwards by the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kerascope.onnx_export.graph import (
    _CONVERTERS,
    _INT_MAX,
    TO_NCHW,
    UnsupportedLayerError,
    _axis,
    _broadcast,
    _class_key,
    _conv,
    _converts,
    _Graph,
    _keras_order,
    _key,
    _np,
    _Value,
    _window,
)


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


# Random augmentation: identity in inference (checked against Keras in the tests). RandomCrop is
# left out: at inference it resizes or center-crops, which changes the shape.
@_converts("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomShear")
@_converts("RandomContrast", "RandomBrightness", "RandomHue", "RandomSaturation")
@_converts("RandomColorJitter", "RandomGrayscale", "RandomSharpness", "RandomInvert")
@_converts("RandomPosterization", "RandomGaussianBlur", "RandomErasing", "RandomPerspective")
def _augmentation(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    return xs[0].name


ChannelAffine = Callable[[Any], tuple[bool, np.ndarray, np.ndarray]]


def register_channel_affine(layer_class: type, affine_of: ChannelAffine) -> None:
    """Convert ``layer_class`` as ``x[..., ::-1 if bgr] * scale + offset`` per channel, with
    ``(bgr, scale, offset) = affine_of(layer)``.

    Why: layers defined above the converter (the zoo's in-graph ``ImagePreprocess``) register
    themselves when their module is imported, so the converter never imports the zoo, and a
    model holding such a layer cannot exist before its converter does. Keys of non-Keras classes
    are module-qualified, so a user layer of the same name is never taken for it.
    """

    def convert(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
        return _channel_affine(g, xs[0], *affine_of(layer))

    _CONVERTERS[_class_key(layer_class)] = convert


def _channel_affine(g: _Graph, x: _Value, bgr: bool, scale: Any, offset: Any) -> str:
    """A channel flip (caffe: a Gather), then Mul and Add."""
    rank = len(x.shape)
    if bgr:
        flip = g.const(np.arange(x.shape[-1])[::-1], np.int64)
        x = _Value(g.op("Gather", [x.name, flip], axis=_axis(-1, rank)), x.shape)
    return _affine(g, x, _uniform(scale), _uniform(offset))


def _uniform(values: np.ndarray) -> Any:
    """One scalar when every channel has the same value (a smaller graph), else the vector."""
    return float(values[0]) if np.all(values == values[0]) else values


@_converts("Resizing")
def _resizing(g: _Graph, layer: Any, xs: list[_Value], args: Any) -> str:
    """Keras resizes without antialiasing at half-pixel centers (jax.image / torch alike).

    Nearest: source index floor((i + 0.5) * in / out), which is ONNX half_pixel rounded half up.
    Output sizes, not scales: a float scale could floor to one pixel short.
    """
    shape = g.op("Shape", [xs[0].name])
    batch_channels = g.op("Slice", [shape, g.const([0], np.int64), g.const([2], np.int64)])
    size = g.const([layer.height, layer.width], np.int64)
    sizes = g.op("Concat", [batch_channels, size], axis=0)
    attrs: dict = {"coordinate_transformation_mode": "half_pixel"}
    if layer.interpolation == "nearest":
        attrs.update(mode="nearest", nearest_mode="round_prefer_ceil")
    else:
        attrs.update(mode="linear")
    return g.op("Resize", [xs[0].name, "", "", sizes], **attrs)
