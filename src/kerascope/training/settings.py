"""A run's settings: every option resolved against its recipe, written as ``config.yaml`` and
read back (with one clear line when damaged) for a resume or an evaluation.

Defaults come from the recipe table (`kerascope.training.recipes`); an explicit value, a zero
included, is never read as "the default".
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kerascope.data.augment import AugmentConfig
from kerascope.errors import ConfigError, RunError
from kerascope.files import write_text
from kerascope.training import heads
from kerascope.training.recipes import RECIPES, Recipe, get_recipe, native_size


def _given(value: Any, default: Any, name: str, minimum: float, strict: bool = False) -> Any:
    """``value`` when given (an explicit 0 included: it is never read as "the default"),
    else ``default``; a value below ``minimum`` (or equal to it, when ``strict``) is refused."""
    if value is None:
        return default
    if value < minimum or (strict and value == minimum):
        bound = f"above {minimum:g}" if strict else f"at least {minimum:g}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return value


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
) -> dict[str, Any]:
    """Every setting of a run as plain data, defaults filled in (written as ``config.yaml``)."""
    r = get_recipe(recipe)
    backbone = resolve_backbone(r, backbone)
    if r.name != "features" and (layer is not None or pool != "avg"):
        raise ConfigError("layer and pool choose the features recipe's features; "
                          f"recipe {r.name!r} takes neither")  # fmt: skip
    n = len(r.stages)
    epochs_ = per_stage(epochs, n, "epochs", broadcast=True)
    lrs = per_stage(lr, n, "lr", broadcast=False)
    stages = [
        {
            "optimizer": s.optimizer,
            "lr": float(_given(lrs[i], s.lr, "lr", minimum=0.0, strict=True)),
            "epochs": int(_given(epochs_[i], s.epochs, "epochs", minimum=1)),
        }
        for i, s in enumerate(r.stages)
    ]
    if image_size is None:
        image_size = r.image_size or native_size(backbone)
    size = [int(image_size)] * 2 if isinstance(image_size, int) else [int(v) for v in image_size]
    if augment is True:
        augment = r.augment
    chosen = {}  # which features: the features recipe's own settings
    if r.name == "features":
        chosen = {"layer": _check_layer(backbone, layer), "pool": _check_pool(pool)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if isinstance(class_weight, dict):
        class_weight = {str(k): float(v) for k, v in class_weight.items()}
    return {
        "recipe": r.name,
        "data": str(Path(data).expanduser().resolve()),
        "output": str(Path(output or Path("runs") / f"{stamp}-{r.name}").expanduser().resolve()),
        "backbone": backbone,
        **chosen,
        "image_size": size,
        "batch_size": int(_given(batch_size, r.batch_size, "batch_size", minimum=1)),
        "stages": stages,
        "seed": int(seed),
        "val_split": float(val_split),
        "skip_bad": bool(skip_bad),
        "class_weight": class_weight,
        "unfreeze": unfreeze if r.uses_backbone and n > 1 else None,
        "augment": asdict(augment) if augment else None,
        "dropout": r.dropout,
        "patience": int(patience if patience is not None else r.patience),
        "monitor": "val_loss",
        "backend": keras_backend(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


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


def _check_layer(backbones: list[str], layer: str | None) -> str | None:
    """``layer`` if every backbone has it (checked on random weights drawn by NumPy: cheap)."""
    if layer is None:
        return None
    from kerascope.zoo.fast_init import numpy_init
    from kerascope.zoo.models import build

    for name in backbones:
        with numpy_init():
            names = [x.name for x in build(name, weights=None, include_top=False).layers]
        if layer not in names:
            import difflib

            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ConfigError(f"backbone '{name}' has no layer '{layer}'{hint}")
    return layer


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


def save_config(run_dir: Path, config: dict[str, Any]) -> Path:
    """Write ``config.yaml`` (keys in a readable order, not sorted)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    return write_text(path, yaml.safe_dump(config, sort_keys=False, default_flow_style=None,
                                           allow_unicode=True))  # fmt: skip


_CONFIG_KEYS = {"recipe": str, "data": str, "image_size": list, "batch_size": int,
                "stages": list, "seed": int, "val_split": float, "patience": int}  # fmt: skip


def load_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run's ``config.yaml``, with one clear line when it is missing or damaged."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"cannot resume '{run_dir}': no config.yaml (is it a run directory?)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"cannot resume '{run_dir}': '{path}' is not valid YAML ({first}); "
                       "restore it or start a new run") from None  # fmt: skip
    problem = _config_problem(config)
    if problem:
        raise RunError(f"cannot resume '{run_dir}': '{path}' {problem}; restore it or start "
                       "a new run")  # fmt: skip
    return config


def _config_problem(config: Any) -> str | None:
    """What is wrong with a loaded config (None when it has what a resume reads)."""
    if not isinstance(config, dict):
        return "is not a mapping of settings"
    for key, kind in _CONFIG_KEYS.items():
        value = config.get(key)
        if kind is float and isinstance(value, int):
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"has no valid '{key}'"
    for stage in config["stages"]:
        if not isinstance(stage, dict) or not {"optimizer", "lr", "epochs"} <= set(stage):
            return "has a stage without optimizer, lr and epochs"
    if config["recipe"] not in RECIPES:
        return f"names an unknown recipe {config['recipe']!r}"
    return None
