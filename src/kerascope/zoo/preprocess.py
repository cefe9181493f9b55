"""Each checkpoint's input normalisation as a layer inside the model graph.

Putting it in the graph means callers always feed RGB pixels in 0..255, saved models carry their
preprocessing with them, and it runs on the device fused with the first convolution.

Normalisation belongs to the weights, not to the architecture (timm's view): the EfficientNet-Lite
checkpoints were trained on ``(x - 127) / 128`` whatever the network code says, so that is the
``lite`` mode of their specs rather than a layer inside the Lite builder.
"""

from __future__ import annotations

import numpy as np

from kerascope.config import ensure_backend
from kerascope.onnx_export.layers import register_channel_affine
from kerascope.zoo.specs import PREPROCESS_MODES

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_LITE_MEAN, _LITE_STD = 127.0, 128.0  # MEAN_RGB / STDDEV_RGB of the TF Lite builder


def affine(mode: str) -> tuple[bool, np.ndarray, np.ndarray]:
    """``(bgr, scale, offset)``: a mode computes ``x[..., ::-1 if bgr] * scale + offset``.

    Every mode is a per-channel affine map, so the ONNX converter, the portable ``.keras``
    export and the explainers' "neutral pixel" can all read it from here instead of each
    keeping its own table of modes.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing mode '{mode}'; use one of {PREPROCESS_MODES}")
    ones = np.ones(3, np.float64)
    if mode == "tf":
        return False, ones / 127.5, -ones
    if mode == "torch":
        std, mean = np.asarray(_TORCH_STD), np.asarray(_TORCH_MEAN)
        return False, 1.0 / (255.0 * std), -mean / std
    if mode == "caffe":
        return True, ones, -np.asarray(_CAFFE_MEAN_BGR)
    if mode == "lite":
        return False, ones / _LITE_STD, ones * (-_LITE_MEAN / _LITE_STD)
    return False, ones, ones * 0.0


def neutral_rgb(mode: str) -> np.ndarray:
    """The RGB pixel (0..255) that ``mode`` maps to 0: masking towards "no signal"."""
    bgr, scale, offset = affine(mode)
    value = -offset / scale
    return (value[::-1] if bgr else value).astype(np.float32)


@keras.saving.register_keras_serializable(package="kerascope")
class ImagePreprocess(keras.layers.Layer):
    """Map RGB 0..255 to what a checkpoint was trained on.

    Modes mirror ``keras.applications.imagenet_utils.preprocess_input``: ``caffe`` (RGB->BGR,
    minus the ImageNet mean), ``tf`` (scale to [-1, 1]), ``torch`` (0..1, ImageNet mean/std)
    and ``none`` (the model normalises by itself); plus ``lite``, ``(x - 127) / 128``, which
    the EfficientNet-Lite checkpoints were trained on.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        affine(mode)  # refuses an unknown mode
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
            return keras.ops.flip(x, axis=-1) - mean
        if self.mode == "lite":
            return (x - _LITE_MEAN) / _LITE_STD
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


# The ONNX converter learns the layer from here (it does not import the zoo): whatever loads or
# builds a model holding an ImagePreprocess has imported this module, so has registered it.
register_channel_affine(ImagePreprocess, lambda layer: affine(layer.mode))
