"""A run's settings: every option resolved against its recipe, written as ``config.yaml`` and
read back (with one clear line when damaged) for a resume or an evaluation.

Defaults come from the recipe table (`kerascope.training.recipes`); an explicit value, a zero
included, is never read as "the default".
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kerascope.data.augment import AugmentConfig
from kerascope.errors import ConfigError
from kerascope.files import check_output_folder
from kerascope.training import heads, optimizers
from kerascope.training.recipes import (
    NO_AUGMENT,
    Recipe,
    get_recipe,
    native_size,
    size_from_data,
)

_log = logging.getLogger(__name__)


def _given(value: Any, default: Any, name: str, minimum: float, strict: bool = False,
           whole: bool = False) -> Any:  # fmt: skip
    """``value`` when given (an explicit 0 included: it is never read as "the default"),
    else ``default``; a value that is no finite number (a whole one, with ``whole``: 8.5 was
    cut to 8, True read as 1, NaN trained a NaN model) or is below ``minimum`` (or equal to
    it, when ``strict``) is refused."""
    if value is None:
        return default
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or (whole and not float(value).is_integer()):
        raise ConfigError(f"{name} must be {'a whole' if whole else 'a finite'} number, got "
                          f"{value!r}")  # fmt: skip
    if value < minimum or (strict and value == minimum):
        bound = f"above {minimum:g}" if strict else f"at least {minimum:g}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return value


def image_sides(value: Any) -> list[int]:
    """``image_size`` as [height, width]: one whole number, or two (a string was split into
    its characters: "64" trained at 6x4); NumPy numbers and arrays as Python's."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()  # np.int64(224) -> 224, np.array([224, 224]) -> [224, 224]
    sides = [value] * 2 if isinstance(value, numbers.Real) else value
    if isinstance(value, str | bytes) or not isinstance(sides, Sequence) or len(sides) != 2:
        raise ConfigError(f"image_size must be a whole number or (height, width), got {value!r}")
    return [int(_given(v, None, "image_size", minimum=1, whole=True)) for v in sides]


def resolve_config(
    data: str | os.PathLike,
    recipe: str,
    output: str | os.PathLike | None,
    backbone: str | Sequence[str] | None,
    epochs: int | Sequence[int] | None,
    batch_size: int | None,
    lr: float | Sequence[float] | None,
    seed: int,
    val_split: float,
    skip_bad: bool,
    class_weight: str | dict | None,
    unfreeze: heads.UnfreezeSpec,
    augment: bool | AugmentConfig | None,
    image_size: int | Sequence[int] | None,
    patience: int | None,
    layer: str | None = None,
    pool: str = "avg",
    head: str | Sequence[str] | None = None,
    dropout: float | None = None,
    optimizer: str | Sequence[str] | None = None,
    momentum: float | None = None,
    lr_schedule: str | Sequence[str] | None = None,
    weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    precision: str | None = None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    init_from: str | os.PathLike | None = None,
    task: str = "multiclass",
    time_budget: float | None = None,
) -> dict[str, Any]:
    """Every setting of a run as plain data, defaults filled in (written as ``config.yaml``).

    ``task``: ``multiclass``, ``binary`` or ``multilabel`` (`kerascope.training.outputs`).

    ``precision`` is stored resolved (``auto`` becomes what this device computes in);
    ``label_smoothing``, ``mixup`` and ``cutmix`` as floats, 0 when off."""
    from kerascope.data.regularise import RegulariseConfig
    from kerascope.precision import resolve_precision
    from kerascope.training.init_from import resolve_init_from

    precision_ = resolve_precision(precision)
    r = stages_for(get_recipe(recipe), unfreeze)
    backbone = resolve_backbone(r, backbone)
    if r.name != "features" and (layer is not None or pool != "avg"):
        raise ConfigError("layer and pool choose the features recipe's features; "
                          f"recipe {r.name!r} takes neither")  # fmt: skip
    stages = resolve_stages(r, epochs, lr, optimizer, momentum, lr_schedule)
    rule = epochs_rule(r, epochs, time_budget)
    if rule["epochs_rule"] == "time budget":  # each stage's epochs are planned when it starts
        for entry, s in zip(stages, r.stages, strict=True):
            entry.update(most_epochs=entry["epochs"], share=s.share)
    regular = RegulariseConfig(float(label_smoothing or 0), float(mixup or 0), float(cutmix or 0))
    from kerascope.training.outputs import check_regularisers, check_task

    check_task(task)  # the name; a binary task's two classes are checked after the scan
    check_regularisers(task, asdict(regular))
    if image_size is None and r.size_from_data:
        image_size = data_size(data, native_size(backbone))
    elif image_size is None:
        image_size = r.image_size or native_size(backbone)
    size = image_sides(image_size)
    if augment is True:
        augment = r.augment
    dropout = float(r.dropout if dropout is None else dropout)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout:g}")
    if r.name == "features":
        _check_pool(pool)
    head_ = resolve_head(r, backbone, head, pool)
    weights_ = resolve_weights(r, backbone, weights)
    probes = _probe_backbones(r, backbone, size)  # builds each backbone: the slow checks last
    chosen = {}  # which features: the features recipe's own settings
    if r.name == "features":
        chosen = {"layer": _check_layer(probes, layer), "pool": pool}
    fine_tune = resolve_unfreeze(r, probes.get(backbone) if isinstance(backbone, str) else None,
                                 unfreeze)  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if isinstance(class_weight, dict):  # a negative weight trained the class away (accuracy 0);
        # a weight of 0 made its rows count as padding (`training.padded`) in loss and accuracy
        class_weight = {str(k): float(_given(v, None, f"class_weight[{k!r}]", minimum=0.0,
                                             strict=True))
                        for k, v in class_weight.items()}  # fmt: skip
    elif class_weight not in (None, "auto", "balanced"):
        raise ConfigError(f"class_weight must be None, 'auto' or a dict, got {class_weight!r}")
    if output is not None:  # a link loop was a traceback (resolve); a file, a late error
        check_output_folder(output)
    return {
        "recipe": r.name,
        "data": str(Path(data).expanduser().resolve()),
        "output": str(Path(output or Path("runs") / f"{stamp}-{r.name}").expanduser().resolve()),
        "backbone": backbone,
        **chosen,
        "image_size": size,
        "batch_size": int(_given(batch_size, r.batch_size, "batch_size", minimum=1, whole=True)),
        "stages": stages,
        "seed": int(seed),
        "val_split": float(val_split),
        "skip_bad": bool(skip_bad),
        "class_weight": class_weight,
        **fine_tune,
        "augment": augment_record(augment),
        **asdict(regular),
        "init_from": resolve_init_from(init_from),
        "head": head_,
        "task": task,
        "dropout": dropout,
        "weights": weights_,
        "patience": int(_given(patience, r.patience, "patience", minimum=0, whole=True)),
        **rule,
        "precision": precision_,
        "monitor": "val_loss",
        "backend": keras_backend(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def stages_for(recipe: Recipe, unfreeze: Any) -> Recipe:
    """The recipe with the stages a run trains: gradual unfreezing (head, top, all) by
    default; an explicit ``unfreeze`` point gives one fine-tuning stage from it (the Keras
    guide's two stages), so its later ``"all"`` stage is left out."""
    if unfreeze is None:
        return recipe
    return replace(recipe, stages=tuple(s for s in recipe.stages if s.unfreeze != "all"))


def epochs_rule(recipe: Recipe, epochs: Any, time_budget: float | None) -> dict[str, Any]:
    """What sets the epochs, for ``config.yaml`` and the report: ``epochs`` given (it always
    wins), else a time budget in minutes (given, or the recipe's; 0 turns it off: the
    recipe's fixed epochs)."""
    if time_budget is not None and not time_budget >= 0:
        raise ConfigError(f"time budget must be at least 0 minutes, got {time_budget!r}")
    budget = recipe.time_budget if time_budget is None else float(time_budget)
    if epochs is not None:
        return {"epochs_rule": "epochs", "time_budget": None}
    if budget:
        return {"epochs_rule": "time budget", "time_budget": float(budget)}
    return {"epochs_rule": "recipe", "time_budget": None}


def data_size(data: str | os.PathLike, native: int) -> int:
    """`recipes.size_from_data` over the image files under ``data``."""
    from kerascope.images import IMAGE_SUFFIXES

    files = sorted(str(p) for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return size_from_data(files, native)


def resolve_stages(recipe: Recipe, epochs: Any, lr: Any, optimizer: Any, momentum: Any,
                   schedule: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Each stage's optimizer, rate, momentum, schedule and epochs: the recipe's unless given.

    ``lr`` and ``optimizer``: a single value sets the first stage (finetune's stage 2 keeps
    its low-rate SGD, the point of that stage), a list sets each. An optimizer other than the
    recipe's stage's, given without ``lr``, gets its own usual rate (`optimizers.DEFAULT_LR`).
    ``momentum`` applies to the SGD stages; ``schedule`` to every stage unless a list.
    A stage that keeps the recipe's optimizer keeps its schedule (unless ``schedule`` is
    given) and discriminative ``lr_ratio``; a stage given another optimizer runs it plainly,
    at one constant rate, as the tutorials do. A later stage's ``unfreeze`` (``"all"``) is
    kept in its entry.
    """
    n = len(recipe.stages)
    try:
        epochs_ = per_stage(epochs, n, "epochs", broadcast=True)
        lrs = per_stage(lr, n, "lr", broadcast=False)
        names = per_stage(listed(optimizer), n, "optimizer", broadcast=False)
        schedules = per_stage(listed(schedule), n, "lr_schedule", broadcast=True)
    except ConfigError as exc:
        if not any(s.unfreeze == "all" for s in recipe.stages):
            raise
        hint = ("finetune unfreezes gradually: the head, the backbone's top, then all of it; "
                "--unfreeze POINT gives two stages")  # fmt: skip
        raise ConfigError(f"{exc} ({hint})") from None
    stages = []
    for i, s in enumerate(recipe.stages):
        name = s.optimizer if names[i] is None else optimizers.check_optimizer(names[i])
        default_lr = s.lr if name == s.optimizer else optimizers.DEFAULT_LR[name]
        stage = {"optimizer": name,
                 "lr": float(_given(lrs[i], default_lr, "lr", minimum=0.0, strict=True)),
                 "epochs": int(_given(epochs_[i], s.epochs, "epochs", minimum=1,
                                      whole=True))}  # fmt: skip
        if name == "sgd":
            m = optimizers.DEFAULT_MOMENTUM if momentum is None else float(momentum)
            if not 0.0 <= m < 1.0:
                raise ConfigError(f"momentum must be in [0, 1), got {m:g}")
            stage["momentum"] = m
        own = name == s.optimizer
        chosen = optimizers.check_schedule(schedules[i] if schedules[i] is not None or not own
                                           else s.schedule)  # fmt: skip
        if chosen is not None:
            stage["schedule"] = chosen
        if own and s.lr_ratio != 1.0:
            stage["lr_ratio"] = float(s.lr_ratio)
        if s.unfreeze not in (None, "run"):
            stage["unfreeze"] = s.unfreeze
        stages.append(stage)
    if momentum is not None and not any(s["optimizer"] == "sgd" for s in stages):
        raise ConfigError("momentum is SGD's, and no stage of this run uses sgd (choose it "
                          "with --optimizer sgd)")  # fmt: skip
    _note_first_stage_only(stages, optimizer=listed(optimizer), lr=lr)
    return stages


def _note_first_stage_only(stages: list[dict[str, Any]], **given: Any) -> None:
    """One warning when a single ``--optimizer``/``--lr`` meets several stages: it sets the
    first only (as documented), and the later stages keep the recipe's, which a user asking
    finetune for "sgd 1e-4" did not expect (stage 2 ran Adam 1e-3 in silence)."""
    single = {name: value for name, value in given.items()
              if value is not None and not isinstance(value, list | tuple)}  # fmt: skip
    if len(stages) < 2 or not single:
        return
    shown = {name: f"{value:g}" if isinstance(value, float) else str(value)
             for name, value in single.items()}  # fmt: skip
    asked = " ".join(f"--{name} {value}" for name, value in shown.items())
    each = "; ".join(f"stage {i + 1}: {optimizers.describe(s)}" for i, s in enumerate(stages))
    every = " ".join(f"--{name} {','.join([value] * len(stages))}"
                     for name, value in shown.items())  # fmt: skip
    later = "stage 2 keeps" if len(stages) == 2 else f"stages 2-{len(stages)} keep"
    _log.warning(f"{asked} applies to the first of {len(stages)} stages only, {later} the "
                 f"recipe's ({each}); for every stage give one value per stage: "
                 f"{every}")  # fmt: skip


def resolve_head(recipe: Recipe, backbone: Any, head: Any, pool: str) -> list[str] | None:
    """The head's parts, checked against what the body gives: a feature map, or vectors for
    pooled ``features``. Not given: the recipe's default as parts (``gap, dropout``;
    ``dropout`` on features), so config.yaml records the head that was built (it said
    ``null``); None for recipes with their own network (scratch, lenet), which have no head
    to choose."""
    if head is None:
        if not recipe.uses_backbone:
            return None
        return heads.default_head(spatial=recipe.name != "features")
    if not recipe.uses_backbone:
        raise ConfigError(f"head chooses the classifier on a backbone; recipe {recipe.name!r} "
                          "has its own network")  # fmt: skip
    parts = heads.parse_head(head)
    spatial = recipe.name != "features" or (pool == "none" and len(backbone) == 1
                                            and heads.reduces_first(parts))  # fmt: skip
    heads.check_head(parts, spatial)
    return parts


def resolve_unfreeze(recipe: Recipe, base: Any, unfreeze: Any) -> dict[str, Any]:
    """``unfreeze`` as given, and ``unfreeze_index``: where fine-tuning starts, in Keras's layer
    numbering, checked on the backbone's layers now (a bad value fails before anything is
    written) and stable across builds, unlike the auto-generated names of some layers."""
    fine_tunes = recipe.uses_backbone and len(recipe.stages) > 1
    if not fine_tunes:
        if unfreeze is not None:
            raise ConfigError(f"unfreeze chooses what finetune's second stage trains; recipe "
                              f"{recipe.name!r} has no such stage")  # fmt: skip
        return {"unfreeze": None}
    value = heads.parse_unfreeze(heads.DEFAULT_UNFREEZE if unfreeze is None else unfreeze)
    index = heads.keras_index(base, heads.unfreeze_start(base, value))
    return {"unfreeze": value, "unfreeze_index": index}


def resolve_weights(recipe: Recipe, backbone: Any, weights: Any) -> Any:
    """Absolute weights files (one per ``features`` backbone), or None for the zoo's own."""
    if weights is None:
        return None
    if not recipe.uses_backbone:
        raise ConfigError(f"weights are a backbone's; recipe {recipe.name!r} trains from random "
                          "weights")  # fmt: skip
    files = weights.split(",") if isinstance(weights, str) else list(weights)
    files = [Path(str(f).strip()).expanduser().resolve() for f in files if str(f).strip()]
    wanted = len(backbone) if isinstance(backbone, list) else 1
    if len(files) != wanted:
        raise ConfigError(f"weights: give one file per backbone ({wanted}, comma-separated), "
                          f"got {len(files)}")  # fmt: skip
    for f in files:
        if not f.is_file():
            raise ConfigError(f"weights file '{f}' does not exist")
    return [str(f) for f in files] if isinstance(backbone, list) else str(files[0])


def _probe_backbones(recipe: Recipe, backbone: Any, size: list[int]) -> dict[str, Any]:
    """Each backbone as the run will build it, shapes only (no weight values: the checks read
    layer names and shapes), to check the size, layer and unfreeze choices before anything is
    written. A ``features`` backbone runs at its own size unless the images are smaller
    (`recipes._feature_branches`). Shapes only: ResNet50's probe 0.71 -> 0.14 s CPU, Lite0's
    0.21 -> 0.13 s, against values drawn by NumPy; and no value is drawn later either
    (`shapes_only`: Keras's deferred values cost Lite0's probe 2.0 s in the first ``fit``).
    """
    from kerascope.zoo import registry
    from kerascope.zoo.fast_init import shapes_only
    from kerascope.zoo.models import build

    if not recipe.uses_backbone:
        _probe_own_network(recipe, size)
        return {}
    probes = {}
    for name in [backbone] if isinstance(backbone, str) else backbone:
        native = registry.get(name).input_size
        shape = size if recipe.name != "features" or min(size) < native else [native] * 2
        try:
            with shapes_only():
                probes[name] = build(name, weights=None, include_top=False,
                                     input_shape=(*shape, 3))  # fmt: skip
        except ValueError:
            raise ConfigError(f"backbone '{name}' cannot run on {shape[0]}x{shape[1]} images: "
                              "its layers shrink them to nothing; give a larger --image-size "
                              f"(it was trained at {native})") from None  # fmt: skip
    return probes


def _probe_own_network(recipe: Recipe, size: list[int]) -> None:
    """A network of the recipe's own (scratch, lenet) built for its shapes at ``size``: its
    convolutions and pooling leave nothing of images too small (scratch needs 22 px), which
    Keras said as a traceback from the first build."""
    from kerascope.training.recipes import build_model
    from kerascope.zoo.fast_init import shapes_only

    try:
        with shapes_only():
            build_model(recipe, 2, tuple(size), None, 0)
    except ValueError:
        raise ConfigError(f"the {recipe.name} network cannot run on {size[0]}x{size[1]} images: "
                          "its layers shrink them to nothing; give a larger --image-size "
                          f"(its default is {recipe.image_size})") from None  # fmt: skip


AUGMENT_UNUSED = ("rescale",)
"""`AugmentConfig` fields no trainer applies: ``rescale`` is the tutorial's 1/255, kept so its
settings round-trip, but every model scales its 0..255 input inside the graph."""


def augment_record(augment: AugmentConfig | dict[str, Any] | None) -> dict[str, Any] | None:
    """The augmentation as config.yaml records it: the fields that change the batches (not
    `AUGMENT_UNUSED`, which it recorded as ``rescale: 1/255`` though no model used it); None
    without augmentation. A dict (an older run's record) is read the same way."""
    if not augment:
        return None
    fields = augment if isinstance(augment, dict) else asdict(augment)
    return {k: v for k, v in fields.items() if k not in AUGMENT_UNUSED}


def changed_augmentation(recipe: str, changes: dict[str, Any],
                         resume: str | os.PathLike | None = None) -> AugmentConfig:  # fmt: skip
    """The recipe's augmentation (a resumed run's own, with ``resume``) with ``changes``
    (`AugmentConfig` fields) applied: ``--zoom 0.1`` changes the zoom and keeps the rest. A
    recipe that trains without augmentation starts from none."""
    if resume is not None:
        from kerascope.training.config_file import load_config

        saved = load_config(resume).get("augment")
        base = AugmentConfig(**saved) if saved else NO_AUGMENT
    else:
        base = get_recipe(recipe).augment or NO_AUGMENT
    return replace(base, **changes)


def resolve_backbone(recipe: Recipe, backbone: str | Sequence[str] | None) -> Any:
    """The recipe's backbone as given (None: its default): one zoo name, or for ``features`` a
    list of canonical names (a comma-separated string also lists several)."""
    from kerascope.zoo import registry

    if not recipe.uses_backbone:
        return None
    value = recipe.backbone if backbone is None else backbone
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not isinstance(recipe.backbone, tuple):
        if len(names) != 1:
            raise ConfigError(f"recipe {recipe.name!r} takes one backbone, got {value!r} "
                              "(the features recipe combines several)")  # fmt: skip
        registry.get(names[0])  # an unknown name fails here, before anything is written
        return names[0]
    names = [registry.get(n).name for n in names]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"recipe {recipe.name!r} needs distinct backbones, got {value!r}")
    return names


def _check_pool(pool: str) -> str:
    from kerascope.bottleneck import POOLS

    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return pool


def _check_layer(probes: dict[str, Any], layer: str | None) -> str | None:
    """``layer`` if every backbone has it (close matches named when not)."""
    if layer is None:
        return None
    for name, probe in probes.items():
        names = [x.name for x in probe.layers]
        if layer not in names:
            import difflib

            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ConfigError(f"backbone '{name}' has no layer '{layer}'{hint}")
    return layer


def listed(value: Any) -> Any:
    """``"rmsprop,sgd"`` as ``["rmsprop", "sgd"]``; anything else as it is."""
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",")]
    return value


def per_stage(value, n: int, name: str, broadcast: bool) -> list:
    """A scalar (every stage, or the first only) or one value per stage."""
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{name} needs {n} value(s), one per stage, got {list(value)}")
        return list(value)
    return [value] * n if broadcast else [value] + [None] * (n - 1)


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


def versions() -> dict[str, str]:
    """Versions that can change a result, for the run's config."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("kerascope", "keras", keras_backend(), "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out
