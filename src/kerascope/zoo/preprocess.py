"""Each Keras family's ``preprocess_input`` as a layer inside the model graph.

Putting it in the graph means callers always feed RGB pixels in 0..255, saved models carry their
preprocessing with them, and it runs on the device fused with the first convolution.
"""

from __future__ import annotations

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="kerascope")
class ImagePreprocess(keras.layers.Layer):
    """Map RGB 0..255 to what a family was trained on.

    Modes mirror ``keras.applications.imagenet_utils.preprocess_input``: ``caffe`` (RGB->BGR,
    minus the ImageNet mean), ``tf`` (scale to [-1, 1]), ``torch`` (0..1, ImageNet mean/std) and
    ``none`` (the model normalises by itself).
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(f"unknown preprocessing mode '{mode}'")
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
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
