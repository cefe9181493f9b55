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
from collections.abc import Sequence
from typing import Any

from kerascope.errors import ConfigError

UnfreezeSpec = int | float | str

DEFAULT_UNFREEZE: float = 0.2
"""Fine-tune the last 20 % of the backbone's layers (rounded back to a block boundary)."""

_BLOCK = re.compile(r"^(.*?blocks?_?\d+[a-z]?)(?:_|/|$)")


HEAD_PARTS = ("gap", "gmp", "flatten", "dropout", "dense")
_REDUCERS = ("gap", "gmp", "flatten")


def parse_head(head: str | Sequence[str]) -> list[str]:
    """Canonical head parts from ``"gap,dense:1024"`` or a list: ``gap`` / ``gmp`` (global
    average / max pooling), ``flatten``, ``dropout[:RATE]`` (no rate: the run's ``dropout``)
    and ``dense:UNITS`` (ReLU). The final ``Dense(classes, softmax)`` is always added, so it is
    never written here.

    Raises:
        ConfigError: an unknown part or a bad number, naming it and the parts there are.
    """
    tokens = head.split(",") if isinstance(head, str) else [str(t) for t in head]
    tokens = [t.strip().lower() for t in tokens if t.strip()]
    if not tokens:
        raise ConfigError(f"head is empty; {_HEAD_HELP}")
    return [_head_part(t) for t in tokens]


_HEAD_HELP = ("use comma-separated gap, gmp, flatten, dropout[:RATE], dense:UNITS "
              "(e.g. gap,dense:1024; the final Dense softmax is added)")  # fmt: skip


def _head_part(token: str) -> str:
    name, _, value = token.partition(":")
    if name not in HEAD_PARTS or (name in _REDUCERS and value):
        raise ConfigError(f"head: unknown part {token!r}; {_HEAD_HELP}")
    if name == "dense":
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"head: {token!r} needs a number of units, e.g. dense:256")
        return f"dense:{int(value)}"
    if name == "dropout" and value:
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"head: {token!r} needs a rate in [0, 1), e.g. dropout:0.5")
        return f"dropout:{rate:g}"
    return name


def default_head(spatial: bool) -> list[str]:
    """GAP -> Dropout on a feature map (the shape the explain module computes CAM for in
    closed form), Dropout alone on feature vectors (the ``features`` recipe's)."""
    return ["gap", "dropout"] if spatial else ["dropout"]


def check_head(parts: Sequence[str], spatial: bool) -> None:
    """Refuse a head that cannot sit on its input before anything is built: dense on a feature
    map, or pooling of features that are already vectors."""
    reduced = None  # the head's part that made vectors of the feature map
    for part in parts:
        name = part.partition(":")[0]
        if name in ("gap", "gmp") and reduced:  # before: blamed --pool, which transfer lacks
            raise ConfigError(f"head: {name} pools a feature map, but the head's {reduced} "
                              "before it made vectors already; keep one of gap, gmp or "
                              "flatten")  # fmt: skip
        if name in ("gap", "gmp") and not spatial:
            raise ConfigError(f"head: {name} pools a feature map, but these features are "
                              "vectors already (pooled by --pool); leave it out or use "
                              "--pool none")  # fmt: skip
        if name in _REDUCERS:
            reduced = reduced or (name if spatial else None)
            spatial = False
        elif name == "dense" and spatial:
            break
    if spatial:
        raise ConfigError("head: the backbone gives a feature map; start the head with gap, "
                          "gmp or flatten (e.g. gap,dense:1024)")  # fmt: skip


def reduces_first(parts: Sequence[str] | None) -> bool:
    """Whether a head starts by turning a feature map into a vector (gap, gmp, flatten)."""
    return bool(parts) and parts[0].partition(":")[0] in _REDUCERS


def classifier_head(
    features: Any,
    num_classes: int,
    dropout: float = 0.2,
    parts: Sequence[str] | None = None,
    seed: int | None = None,
    activation: str = "softmax",
    zero_init: bool = False,
) -> Any:
    """The head's layers, then Dense(softmax) named ``predictions``.

    ``zero_init``: that last layer starts at zero (BiT's and big_vision's new head for
    fine-tuning), so the network starts at chance (loss ln k), whatever the size of the
    features. Why: Glorot weights on a pretrained backbone's features started over-confident
    where the features are large (EfficientNet-Lite0 at 64 px: logits of std 3.9, loss 4.2
    against ln 3 = 1.1, where 224 px gives 0.6 and 1.4), and a short run never recovered. The
    trainers ask for it; a model built without it keeps the random start (gradients reach
    the backbone from the first step).

    ``activation="sigmoid"``: independent probabilities instead (a binary head is
    ``num_classes=1``, the seed's cats-vs-dogs Dense(1, sigmoid); a multi-label head one unit
    per label), trained with binary cross-entropy (`kerascope.training.outputs`).

    The default (``gap, dropout``) is GlobalAveragePooling2D -> Dropout -> Dense: this exact
    shape lets the explain module compute CAM / Grad-CAM gradients in closed form (the Dense
    weights are the channel weights). Layer names are stable (``avg_pool``, ``head_dropout``,
    ``fc1``...), so checkpoints of one head always load into the same head.
    """
    import keras

    L = keras.layers
    x = features
    parts = list(parts) if parts is not None else default_head(len(features.shape) == 4)
    seen: dict[str, int] = {}

    def named(base: str) -> str:
        seen[base] = seen.get(base, 0) + 1
        return base if seen[base] == 1 else f"{base}_{seen[base]}"

    def init(offset: int) -> Any:  # the softmax layer gets ``seed`` itself, fc<i> seed + i
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)

    for part in parts:
        name, _, value = part.partition(":")
        if name == "gap":
            x = L.GlobalAveragePooling2D(name=named("avg_pool"))(x)
        elif name == "gmp":
            x = L.GlobalMaxPooling2D(name=named("max_pool"))(x)
        elif name == "flatten":
            x = L.Flatten(name=named("head_flatten"))(x)
        elif name == "dropout":
            rate = float(value) if value else dropout
            x = L.Dropout(rate, seed=seed, name=named("head_dropout"))(x)
        elif name == "dense":
            number = seen.get("fc", 0) + 1
            x = L.Dense(int(value), activation="relu", kernel_initializer=init(number),
                        name=f"fc{number}")(x)  # fmt: skip
            named("fc")
        else:
            raise ConfigError(f"head: unknown part {part!r}; {_HEAD_HELP}")
    # float32 whatever the precision: a softmax in bfloat16 keeps 3 significant digits
    return L.Dense(num_classes, activation=activation, dtype="float32", name="predictions",
                   kernel_initializer="zeros" if zero_init else init(0))(x)  # fmt: skip


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


def parse_unfreeze(value: UnfreezeSpec) -> UnfreezeSpec:
    """``--unfreeze`` text as its value: ``"all"``, an int index, a float fraction in (0, 1)
    or a layer name (kept as given)."""
    if isinstance(value, bool):
        raise ConfigError(f"unfreeze must be a fraction, a layer index, a layer name or 'all', "
                          f"got {value!r}")  # fmt: skip
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() == "all":
        return "all"
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def unfreeze_start(backbone: Any, unfreeze: UnfreezeSpec = DEFAULT_UNFREEZE) -> int:
    """Index into ``backbone.layers`` from which layers are fine-tuned.

    Args:
        backbone: the pretrained model.
        unfreeze: what to train, from the top:

            * a float in (0, 1): that share of the layers, moved back to the start of the
              block it cuts into (names like ``blocks_13_...``, ``block5a_...``,
              ``conv5_block3_...``), so a block is never half-trained;
            * an int: the index of the first layer to train, numbered as
              ``keras.applications`` numbers them (`kerascope.zoo.layers.numbered_layers`:
              kerascope's preprocessing layer left out), so the Keras guide's "train from
              layer 249" of InceptionV3 (the two top inception blocks) is ``249`` here;
            * a layer name: train from that layer on;
            * ``"all"``: every layer (BatchNorm excepted, see `unfreeze_top`).

    Raises:
        ConfigError: an unknown layer name (close matches listed), an index out of range
            (the valid range named) or a fraction outside (0, 1).
    """
    from kerascope.zoo.layers import numbered_layers

    unfreeze = parse_unfreeze(unfreeze)
    layers = backbone.layers
    position = {id(layer): i for i, layer in enumerate(layers)}
    numbered = [layer for _, layer in numbered_layers(backbone)]
    if unfreeze == "all":
        return 1  # everything but the Input layer
    if isinstance(unfreeze, str):
        names = [layer.name for layer in layers]
        if unfreeze not in names:
            import difflib

            close = difflib.get_close_matches(unfreeze, names, n=5, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else (
                "its last layers: " + ", ".join(names[-6:]))  # fmt: skip
            raise ConfigError(f"backbone '{backbone.name}' has no layer '{unfreeze}'; {hint}")
        return names.index(unfreeze)
    if isinstance(unfreeze, int):
        if not 1 <= unfreeze < len(numbered):
            raise ConfigError(
                f"unfreeze index {unfreeze} is out of range for '{backbone.name}': its layers "
                f"are numbered 0..{len(numbered) - 1} as in keras.applications (0 is the "
                f"input), so give 1..{len(numbered) - 1}, a fraction such as 0.2, a layer "
                "name or 'all'"
            )
        return position[id(numbered[unfreeze])]
    if not 0.0 < float(unfreeze) < 1.0:
        raise ConfigError(f"unfreeze as a fraction must be between 0 and 1, got {unfreeze:g} "
                          "(an int is a layer index; 'all' trains every layer)")  # fmt: skip
    count = max(1, round((len(numbered) - 1) * float(unfreeze)))
    start = position[id(numbered[len(numbered) - count])]
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


def keras_index(backbone: Any, start: int) -> int:
    """``backbone.layers[start]``'s index in keras.applications numbering (for the config)."""
    from kerascope.zoo.layers import numbered_layers

    layer = backbone.layers[start]
    for index, numbered in numbered_layers(backbone):
        if numbered is layer:
            return index
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
