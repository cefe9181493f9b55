"""Classifier heads and the freeze / unfreeze rules of transfer learning.

Two Keras 3 facts shape this file:

* Calling a nested backbone with ``training=False`` does *not* keep it in inference mode: the
  outer model's ``training=True`` is injected into every nested call (checked on Keras 3.15).
  What does hold is that a ``BatchNormalization`` layer with ``trainable=False`` always uses
  its moving statistics. So freezing sets ``trainable=False`` layer by layer, and BatchNorm
  layers stay frozen even when their block is unfrozen for fine-tuning (the Keras guide's
  advice: updating batch statistics on a small dataset wrecks the pretrained features).
* Dropout ignores ``trainable``. Inside a frozen backbone (EfficientNet's stochastic depth) it
  would only add noise to the features the new head learns from, so freezing sets its rate
  to 0. At inference Dropout is an identity either way, so predictions are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from kerascope.errors import ConfigError

UnfreezeSpec = int | float | str

DEFAULT_UNFREEZE: float = 0.2
"""Fine-tune the last 20 % of the backbone's layers (rounded back to a block boundary)."""

_BLOCK = re.compile(r"^(.*?blocks?_?\d+[a-z]?)(?:_|/|$)")


def classifier_head(features: Any, num_classes: int, dropout: float = 0.2) -> Any:
    """GlobalAveragePooling2D -> Dropout -> Dense(softmax) on a 4-D feature map.

    This exact shape lets the explain module compute CAM / Grad-CAM gradients in closed form
    (the Dense weights are the channel weights), so nothing deeper goes into the head.
    """
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def _is_batchnorm(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def freeze(model: Any) -> None:
    """Make every layer of ``model`` untrainable and silence its Dropout (see module doc)."""
    import keras

    model.trainable = False
    for layer in _leaf_layers(model):
        layer.trainable = False
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0


def _leaf_layers(model: Any) -> list[Any]:
    """Layers of ``model`` in order, nested models expanded."""
    out = []
    for layer in getattr(model, "layers", []):
        out += _leaf_layers(layer) if getattr(layer, "layers", None) else [layer]
    return out


def unfreeze_start(backbone: Any, unfreeze: UnfreezeSpec = DEFAULT_UNFREEZE) -> int:
    """Index into ``backbone.layers`` from which layers are fine-tuned.

    Args:
        backbone: the pretrained model.
        unfreeze: an int N (the last N layers), a float in (0, 1] (that fraction of the
            layers), ``"all"``, or a layer name (fine-tune from that layer on, as the
            InceptionV3 guide does with layer 249, the start of its top two blocks). Int and
            float counts are moved back to the start of the block they cut into (names like
            ``blocks_13_...``, ``block5a_...``, ``conv5_block3_...``), so a block is never
            half-trained.

    Raises:
        ValueError: an unknown layer name or a count out of range.
    """
    layers = backbone.layers
    n = len(layers)
    if isinstance(unfreeze, str) and unfreeze != "all":
        if unfreeze.strip().lstrip("-").isdigit():
            return unfreeze_start(backbone, int(unfreeze))
        try:
            return unfreeze_start(backbone, float(unfreeze))
        except ValueError:
            pass
        names = [layer.name for layer in layers]
        if unfreeze not in names:
            raise ConfigError(
                f"backbone '{backbone.name}' has no layer '{unfreeze}'; its last layers: "
                + ", ".join(names[-8:])
            )
        return names.index(unfreeze)
    if unfreeze == "all":
        return 1  # everything but the Input layer
    if isinstance(unfreeze, float) and not isinstance(unfreeze, bool):
        if not 0.0 < unfreeze <= 1.0:
            raise ConfigError(f"unfreeze as a fraction must be in (0, 1], got {unfreeze}")
        count = max(1, round((n - 1) * unfreeze))
    else:
        count = int(unfreeze)
        if not 1 <= count < n:
            raise ConfigError(f"unfreeze must be 1..{n - 1} layers of '{backbone.name}'")
    start = n - count
    match = _BLOCK.match(layers[start].name)
    if match:
        prefix = match.group(1)
        while (
            start > 1
            and _BLOCK.match(layers[start - 1].name)
            and (_BLOCK.match(layers[start - 1].name).group(1) == prefix)
        ):
            start -= 1
    return start


def unfreeze_top(backbone: Any, unfreeze: UnfreezeSpec = DEFAULT_UNFREEZE) -> list[str]:
    """Make the top layers of a frozen ``backbone`` trainable, BatchNorm excepted.

    Returns:
        Names of the layers now trainable (for the run's config and report).
    """
    start = unfreeze_start(backbone, unfreeze)
    backbone.trainable = True  # a model's flag gates its layers'; the layers decide below
    names = []
    for i, layer in enumerate(backbone.layers):
        trainable = i >= start and not _is_batchnorm(layer)
        for leaf in _leaf_layers(layer) if getattr(layer, "layers", None) else [layer]:
            leaf.trainable = trainable and not _is_batchnorm(leaf)
        layer.trainable = trainable
        if trainable and layer.weights:
            names.append(layer.name)
    return names


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, frozen) parameter counts: what a stage actually updates."""
    import numpy as np

    def total(variables: list) -> int:
        return int(sum(np.prod(v.shape) for v in variables))

    return total(model.trainable_weights), total(model.non_trainable_weights)
