"""The training recipes: which network, at what size, trained how, in how many stages.

Each recipe is the seed tutorial's choice made explicit, with every number a default that a
run may override (and that is written to the run's ``config.yaml``):

* ``scratch``: the cats-vs-dogs small CNN (three 3x3 conv + max-pool blocks of 32, 32, 64
  filters, Dense 64, Dropout 0.5) at 150x150, RMSprop, heavy augmentation.
* ``lenet``: LeNet as in the traffic-sign tutorial (conv 20 5x5, pool, conv 50 5x5, pool,
  Dense 500) at its ``norm_size`` 32x32, Adam 1e-3, 35 epochs, batch 32. Its augmentation
  is the tutorial's minus horizontal flips: a mirrored "turn left" sign is a "turn right".
* ``transfer``: a pretrained zoo backbone, frozen, under GAP -> Dropout -> Dense; RMSprop as
  in the Keras Applications guide for the new head.
* ``finetune``: what fastai's ``fine_tune`` is known for, with ULMFiT's gradual unfreezing:
  the head alone (Adam 2e-3, one-cycle), then the top of the backbone (``--unfreeze``, default
  its top 20 %, block-aligned), then all of it, each with Adam 1e-3 on a one-cycle schedule
  and discriminative rates (``optimizers.layer_rates``: lr/100 at the first backbone layer up
  to lr/10 at its last, lr for the head). Each stage starts from the best weights so far and
  stops early on validation loss. Epochs come from a time budget (``budget``: 15 minutes,
  measured per stage) unless given; images are trained at their own size up to the
  backbone's (:func:`size_from_data`). ``--unfreeze POINT`` gives the Keras guide's two
  stages instead (head, then from POINT; e.g. ``--optimizer rmsprop,sgd --lr 1e-3,1e-4``).
* ``features``: the seed's bottleneck ensemble (``gap_ResNet50.h5 + gap_Xception.h5 + ...``):
  several frozen backbones' pooled features concatenated under Dropout(0.5) -> Dense, Adam
  1e-3, no augmentation (so the backbones run once per stage: ``kerascope.training.split``). The
  saved model holds the backbones too and takes raw images at the largest backbone's size;
  each branch resizes to its own size inside the graph, as ``kerascope.bottleneck`` does.

A run may change any of these: the head (``heads.parse_head``: the seed's Flatten -> Dense 256
-> Dropout 0.5, the guide's GAP -> Dense 1024), the optimizer, rate, SGD momentum and schedule
of each stage (``optimizers``), what fine-tuning unfreezes, the augmentation.

Every model takes RGB 0..255 and holds its scaling as layers, so a saved model classifies raw
pixels like any zoo model. Augmentation is not part of the model: the trainers apply it to the
batch (``kerascope.data.augment``: one definition, a Pillow executor on the host and a device
executor inside the jitted step), so what is trained is what is saved.

Precision: a model is built in float32; :func:`set_precision` switches the layers a stage trains
to a Keras mixed policy (float32 weights, bfloat16/float16 compute), the output layer kept in
float32 (a softmax in bfloat16 rounds probabilities to 3 significant digits), and
:func:`inference_model` switches everything back before the model is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kerascope.data.augment import AugmentConfig
from kerascope.errors import ConfigError
from kerascope.training import heads
from kerascope.training.optimizers import make_optimizer  # noqa: F401  (benchmarks use it here)

NO_AUGMENT = AugmentConfig(0, 0, 0, 0, 0, horizontal_flip=False)


@dataclass(frozen=True)
class Stage:
    """One ``fit`` call: its optimizer, learning rate and epoch budget."""

    optimizer: str  # kerascope.training.optimizers.OPTIMIZERS (sgd: momentum 0.9)
    lr: float
    epochs: int  # the fixed number; under a time budget the most the stage may run
    schedule: str | None = None  # with the recipe's optimizer (another runs at a constant lr)
    lr_ratio: float = 1.0  # discriminative rates: the first backbone layer at lr / lr_ratio
    unfreeze: str | None = None  # None: head only; "run": the run's --unfreeze; "all"
    share: float = 1.0  # its weight in the time budget left when it starts


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe; ``train`` resolves them against the caller's overrides."""

    name: str
    summary: str
    stages: tuple[Stage, ...]
    image_size: int | None  # None: the backbone's native size
    batch_size: int
    patience: int
    dropout: float
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    uses_backbone: bool = False
    backbone: str | tuple[str, ...] | None = None  # default; a tuple: several, concatenated
    time_budget: float | None = None  # minutes: epochs from measured epoch times (`budget`)
    size_from_data: bool = False  # image_size None: the data's size up to the backbone's


RECIPES: dict[str, Recipe] = {
    "scratch": Recipe(
        "scratch",
        "small CNN from the cats-vs-dogs tutorial, trained from random weights",
        (Stage("rmsprop", 1e-3, 50),),
        image_size=150,
        batch_size=32,
        patience=10,
        dropout=0.5,
    ),
    "lenet": Recipe(
        "lenet",
        "LeNet for small images such as traffic signs",
        (Stage("adam", 1e-3, 35),),
        image_size=32,
        batch_size=32,
        patience=10,
        dropout=0.0,
        augment=AugmentConfig(30, 0.1, 0.1, 0.2, 0.2, horizontal_flip=False),
    ),
    "transfer": Recipe(
        "transfer",
        "frozen pretrained backbone, new classifier head",
        (Stage("rmsprop", 1e-3, 10),),
        image_size=None,
        batch_size=32,
        patience=3,
        dropout=0.2,
        uses_backbone=True,
        backbone="efficientnet_lite0",
    ),
    "finetune": Recipe(
        "finetune",
        "fastai's fine_tune: head, then gradual unfreezing, discriminative one-cycle rates",
        (
            Stage("adam", 2e-3, 3, "onecycle", share=0.2),
            Stage("adam", 1e-3, 10, "onecycle", lr_ratio=100.0, unfreeze="run", share=0.35),
            Stage("adam", 1e-3, 20, "onecycle", lr_ratio=100.0, unfreeze="all", share=0.45),
        ),
        image_size=None,
        batch_size=32,
        patience=3,
        dropout=0.2,
        uses_backbone=True,
        backbone="efficientnet_lite0",
        time_budget=15.0,
        size_from_data=True,
    ),
    "features": Recipe(
        "features",
        "pooled features of frozen backbones, concatenated, under a new classifier head",
        (Stage("adam", 1e-3, 10),),
        image_size=None,
        batch_size=32,
        patience=10,
        dropout=0.5,
        augment=None,
        uses_backbone=True,
        backbone=("efficientnet_lite0", "efficientnet_lite1"),
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or a ValueError listing the recipes."""
    try:
        return RECIPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def size_from_data(files: Sequence[str], native: int, smallest: int = 64) -> int:
    """The training size the data asks for: the median shorter side of (a sample of) the
    images, rounded down to a multiple of 32, between ``smallest`` and the backbone's
    ``native`` size. Why: smaller images gain nothing from being upscaled to 224 px but cost
    (224 / side)^2 times the compute per epoch, which a time budget spends on epochs instead;
    larger ones are shrunk to what the pretrained weights saw."""
    from PIL import Image

    sides = []
    step = max(1, len(files) // 64)
    for path in list(files)[::step][:64]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:
            continue  # the scan reports unreadable files; they do not choose the size
    if not sides:
        return native
    median = sorted(sides)[len(sides) // 2]
    return int(min(native, max(smallest, median // 32 * 32)))


def native_size(backbone: str | Sequence[str]) -> int:
    """The backbone's pretrained input size (what its weights expect); of several, the largest."""
    from kerascope.zoo import registry

    names = [backbone] if isinstance(backbone, str) else backbone
    return max(registry.get(name).input_size for name in names)


# Below this side Keras's applications refuse ImageNet weights: a backbone sees almost nothing.
SMALLEST_PRETRAINED = 32


def too_small_to_see(recipe: Recipe, image_size: Sequence[int]) -> str | None:
    """The warning for a pretrained backbone on images too small for it, or None."""
    if not recipe.uses_backbone or min(image_size) >= SMALLEST_PRETRAINED:
        return None
    h, w = image_size
    return (
        f"{h}x{w} images are too small for a pretrained backbone to see anything (Keras's "
        f"applications take {SMALLEST_PRETRAINED} px or more); expect accuracy near chance"
    )


def build_model(
    recipe: Recipe,
    num_classes: int,
    image_size: tuple[int, int],
    augment: AugmentConfig | None,
    seed: int,
    backbone: str | Sequence[str] | None = None,
    backbone_weights: str | None = "imagenet",
    dropout: float | None = None,
    layer: str | None = None,
    pool: str = "avg",
    head: Sequence[str] | None = None,
    task: str = "multiclass",
    zero_head: bool = False,
) -> Any:
    """The recipe's network: Input (RGB 0..255) -> body -> head -> softmax, in float32.

    ``task``: ``"multiclass"`` (softmax, one class per image), ``"binary"`` (two classes, one
    sigmoid unit: the probability of class 1) or ``"multilabel"`` (a sigmoid unit per label).

    ``augment`` is not built in (the trainers augment the batch; kept in the signature so
    callers that pass the recipe's config still work).

    For ``transfer``/``finetune`` the body is the zoo backbone as a nested model, frozen, so
    the explain module finds its last conv layer and a checkpoint keeps its weight names.
    For ``features`` it is one frozen branch per backbone (``layer``, ``pool``: which
    activations each contributes, as in ``kerascope.bottleneck``), concatenated.
    ``head``: `heads.parse_head` parts (None: `heads.default_head`). ``backbone_weights``:
    ``"imagenet"`` (the zoo's file), a weights file, or one file per ``features`` backbone.
    ``zero_head``: a backbone recipe's output layer starts at zero (`heads.classifier_head`'s
    ``zero_init``: at chance, however large the features), as the trainers build it.
    """
    import keras

    dropout = recipe.dropout if dropout is None else dropout
    activation = "softmax" if task == "multiclass" else "sigmoid"
    num_classes = 1 if task == "binary" else num_classes
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = inputs
    # The head is seeded here, not by the global seed: building a backbone may draw random
    # numbers (a first build ports the weights), and the head must not depend on it.
    if recipe.name == "features":
        names = [backbone] if isinstance(backbone, str) else list(backbone or recipe.backbone)
        spatial = len(names) == 1 and heads.reduces_first(head)
        x = _feature_branches(x, names, image_size, layer, pool, backbone_weights, spatial)
        outputs = heads.classifier_head(x, num_classes, dropout, head, seed=seed,
                                        activation=activation, zero_init=zero_head)  # fmt: skip
        name = "features_ensemble"
    elif recipe.uses_backbone:
        from kerascope.zoo.models import build

        base = build(backbone, weights=_one_file(backbone_weights), include_top=False,
                     pooling=None, input_shape=(*image_size, 3))  # fmt: skip
        heads.freeze(base)
        outputs = heads.classifier_head(base(x, training=False), num_classes, dropout, head,
                                        seed=seed, activation=activation,
                                        zero_init=zero_head)  # fmt: skip
        name = f"{base.name}_{recipe.name}"
    elif recipe.name == "scratch":
        outputs, name = _small_cnn(x, num_classes, dropout, activation), "small_cnn"
    elif recipe.name == "lenet":
        outputs, name = _lenet(x, num_classes, activation), "lenet"
    else:
        raise ValueError(f"recipe {recipe.name!r} has no model builder")
    return keras.Model(inputs, outputs, name=name)


def _one_file(weights: Any) -> Any:
    """A transfer backbone's weights: ``"imagenet"``, None or its one file."""
    if isinstance(weights, list | tuple):
        return weights[0]
    return weights


def _feature_branches(x: Any, names: list[str], image_size: tuple[int, int], layer: str | None,
                      pool: str, weights: Any, spatial: bool = False) -> Any:  # fmt: skip
    """Per backbone: resize -> frozen body (``bottleneck.build_body``) [-> flatten]; then the
    branches concatenated. A backbone runs at its pretrained size, resized inside the graph
    (the ``Resizing`` ``bottleneck.resizer`` makes), unless the images are smaller than that:
    then at the image size, as ``transfer`` runs its backbone (and as ``kerascope features``
    caches it). ``spatial``: one branch keeps its feature map for a head that pools or
    flattens it itself (the seed's Flatten -> Dense 256 on VGG16's 4x4x512)."""
    import keras

    from kerascope.bottleneck import FeatureSpec, build_body

    if weights is None:
        raise ConfigError("the features recipe needs pretrained backbones (weights=None given)")
    files = weights if isinstance(weights, list | tuple) else [weights] * len(names)
    branches = []
    for name, file in zip(names, files, strict=True):
        explicit = None if file == "imagenet" else file
        spec = FeatureSpec.make(name, layer, pool, weights=explicit)
        size = spec.input_size
        small = min(image_size) < size
        body = build_body(spec, input_shape=(*image_size, 3) if small else None)
        heads.freeze(body)
        y = x
        if not small and tuple(image_size) != (size, size):
            y = keras.layers.Resizing(size, size, name=f"resize_{spec.backbone}")(y)
        y = body(y, training=False)
        if len(y.shape) > 2 and not spatial:
            y = keras.layers.Flatten(name=f"flatten_{spec.backbone}")(y)
        branches.append(y)
    return branches[0] if len(branches) == 1 else keras.layers.Concatenate(name="concat")(branches)


def _small_cnn(x: Any, num_classes: int, dropout: float, activation: str = "softmax") -> Any:
    """The tutorial's three conv blocks; Rescaling inside, as the tutorial's ``rescale=1/255``."""
    import keras

    L = keras.layers
    x = L.Rescaling(1.0 / 255.0, name="rescale")(x)
    for i, filters in enumerate((32, 32, 64), 1):
        x = L.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    x = L.Dropout(dropout, name="dropout")(x)
    return L.Dense(num_classes, activation=activation, name="predictions")(x)


def _lenet(x: Any, num_classes: int, activation: str = "softmax") -> Any:
    """LeNet-5 as in the traffic-sign tutorial ("same" padding, ReLU, 2x2/2 max-pooling)."""
    import keras

    L = keras.layers
    x = L.Rescaling(1.0 / 255.0, name="rescale")(x)
    x = L.Conv2D(20, 5, padding="same", activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(2, 2, name="pool1")(x)
    x = L.Conv2D(50, 5, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2, 2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(500, activation="relu", name="fc1")(x)
    return L.Dense(num_classes, activation=activation, name="predictions")(x)


def inference_model(model: Any) -> Any:
    """The trained network as it is saved as ``model.keras``: every layer back in float32.

    Training may have run layers under a mixed policy (:func:`set_precision`); the weights
    are float32 either way, so only the compute dtype changes and the saved file is the same
    whatever precision trained it (inference picks its own with ``--precision``). Models of
    older kerascope versions had an ``augmentation`` layer up front; it is left out here.
    """
    import keras

    set_precision(model, "float32")
    if not any(layer.name == "augmentation" for layer in model.layers):
        return model

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        return args[0] if layer.name == "augmentation" else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer,
                                    call_function=call)  # fmt: skip


def set_precision(model: Any, precision: str) -> None:
    """Run ``model``'s layers in ``precision`` (``float32``, ``bfloat16``, ``float16``) with
    float32 weights, its output layers in float32. Nested models included; the weights are
    untouched, so this can change between stages and back before saving."""
    import keras

    from kerascope.precision import dtype_policy

    policy = dtype_policy(precision)
    outputs = {id(t._keras_history.operation) for t in model.outputs}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if not isinstance(layer, keras.layers.InputLayer):
            layer.dtype_policy = "float32" if id(layer) in outputs else policy


def backbone_of(model: Any) -> Any | None:
    """The nested pretrained model inside a transfer model (None for scratch/lenet)."""
    nested = [layer for layer in model.layers if getattr(layer, "layers", None)]
    nested = [m for m in nested if m.name != "augmentation"]
    return nested[0] if nested else None


def prepare_stage(model: Any, stage_index: int, unfreeze: heads.UnfreezeSpec) -> list[str]:
    """Set the trainable flags for a stage; stage 2 of finetune unfreezes the backbone's top,
    a later stage (gradual unfreezing) what its ``unfreeze`` says, e.g. ``"all"``.

    Returns:
        Names of the backbone layers being fine-tuned (empty in a head-only stage).
    """
    if stage_index == 0:
        return []
    base = backbone_of(model)
    if base is None:
        raise ValueError("only a backbone recipe has a fine-tuning stage")
    return heads.unfreeze_top(base, unfreeze)


def class_weights(
    mode: str | dict | None, classes: Sequence[str], counts: dict[str, int]
) -> dict[int, float] | None:
    """Per-class loss weights: ``"auto"`` gives n / (k * n_c), so each class weighs the same.

    A dict may name classes or give indices; classes it leaves out weigh 1.
    """
    if mode is None:
        return None
    if mode in ("auto", "balanced"):
        total, k = sum(counts.values()), len(classes)
        return {i: total / (k * counts[c]) for i, c in enumerate(classes)}
    if isinstance(mode, dict):
        out = {i: 1.0 for i in range(len(classes))}
        for key, value in mode.items():
            key = str(key)
            if key in classes:
                out[classes.index(key)] = float(value)
            elif key.isdigit() and int(key) < len(classes):
                out[int(key)] = float(value)
            else:
                raise ConfigError(f"class_weight names unknown class {key!r}; classes: {classes}")
        return out
    raise ConfigError(f"class_weight must be None, 'auto' or a dict, got {mode!r}")
