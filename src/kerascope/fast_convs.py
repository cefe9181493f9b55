"""Convolutions in the shapes XLA's CPU backend runs fast: for training on a CPU.

XLA's CPU backend runs ``conv_general_dilated`` with ``feature_group_count == channels`` (a
depthwise convolution: every MobileNet/EfficientNet block) an order of magnitude slower than
the same arithmetic written as ``kh * kw`` shifted slices multiplied by per-channel weights.
Measured on the 2-core reference machine for a 32x7x7x1152 input and a 5x5 kernel
(EfficientNet-Lite0's top blocks): forward 222 ms -> 24 ms, gradient 2,576 ms -> 291 ms.
Likewise a 1x1 convolution is a matrix product, and XLA's CPU dot is faster than its
convolution: gradient of a 32x7x7x192 -> 1152 pointwise conv 37 ms -> 16 ms. Training the top
of a backbone is dominated by these two kinds of layers.

:func:`fast_convs` swaps Keras's JAX ``depthwise_conv`` and ``conv`` for these formulations
while kerascope traces its own functions (it changes nothing outside the ``with`` block, so
the user's Keras code in the same process is untouched). Results equal the original up to
float summation order; shapes they do not cover (dilation, depth multiplier > 1,
channels_first, strided or larger kernels for ``conv``) go to the original.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_originals: dict[str, object] = {}


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(int(v) for v in value)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/XLA "same" padding: the extra row or column goes after, not before."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def shifted_depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None,
                           dilation_rate=1):  # fmt: skip
    """Keras's ``depthwise_conv`` signature, NHWC, depth multiplier 1, no dilation."""
    import jax.numpy as jnp
    from keras.src import backend

    data_format = backend.standardize_data_format(data_format)
    inputs, kernel = jnp.asarray(inputs), jnp.asarray(kernel)
    if (
        data_format != "channels_last"
        or inputs.ndim != 4
        or kernel.shape[-1] != 1
        or _pair(dilation_rate) != (1, 1)
    ):
        return _originals["depthwise_conv"](inputs, kernel, strides, padding, data_format,
                                            dilation_rate)  # fmt: skip
    (kh, kw), (sh, sw) = kernel.shape[:2], _pair(strides)
    height, width = inputs.shape[1:3]
    if padding.lower() == "same":
        top, bottom = _same_padding(height, kh, sh)
        left, right = _same_padding(width, kw, sw)
    else:
        top = bottom = left = right = 0
    x = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    weights = kernel[:, :, :, 0]
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
            term = tap * weights[i, j]
            out = term if out is None else out + term
    return out


def matmul_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """Keras's ``conv`` signature; a 1x1, stride-1 NHWC convolution as one matrix product."""
    import jax.numpy as jnp
    from keras.src import backend

    data_format = backend.standardize_data_format(data_format)
    inputs, kernel = jnp.asarray(inputs), jnp.asarray(kernel)
    if (
        data_format != "channels_last"
        or inputs.ndim != 4
        or tuple(kernel.shape[:2]) != (1, 1)
        or _pair(strides) != (1, 1)
        or _pair(dilation_rate) != (1, 1)
        or kernel.shape[2] != inputs.shape[-1]  # grouped convolution
    ):
        return _originals["conv"](inputs, kernel, strides, padding, data_format, dilation_rate)
    rows = inputs.reshape(-1, inputs.shape[-1]) @ kernel[0, 0]
    return rows.reshape(*inputs.shape[:3], kernel.shape[-1])


_FAST = {"depthwise_conv": shifted_depthwise_conv, "conv": matmul_conv}


@contextlib.contextmanager
def fast_convs() -> Iterator[None]:
    """Within the block, Keras-JAX traces depthwise and 1x1 convolutions in their fast CPU
    forms (on a CPU only).

    Functions must be *traced* inside the block (``fit``'s first step, a jitted function's
    first call); once compiled they keep the formulation they were traced with.
    """
    global _depth
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    if jax.default_backend() != "cpu":
        yield
        return
    from keras.src.backend.jax import nn

    with _lock:
        if _depth == 0:
            for name, fast in _FAST.items():
                _originals[name] = getattr(nn, name)
                setattr(nn, name, fast)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for name, original in _originals.items():
                    setattr(nn, name, original)
