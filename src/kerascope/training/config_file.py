"""A run's ``config.yaml``: written, read back for ``--resume``, and checked, so an edited or
damaged file is one line naming the bad value, never a failure deep in a ``fit``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kerascope.errors import RunError
from kerascope.files import write_text
from kerascope.training.recipes import RECIPES


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
    if not config["stages"]:
        return "has no stages"
    for stage in config["stages"]:
        if not isinstance(stage, dict) or not {"optimizer", "lr", "epochs"} <= set(stage):
            return "has a stage without optimizer, lr and epochs"
    if config["recipe"] not in RECIPES:
        return f"names an unknown recipe {config['recipe']!r}"
    return _range_problem(config)


def _range_problem(config: dict[str, Any]) -> str | None:
    """A value no run could have been started with (an edited or damaged file): each is
    checked here, where ``train`` checks it for a new run, rather than deep in a ``fit``."""
    size = config["image_size"]
    if len(size) != 2 or not all(_number(v, int) and v >= 1 for v in size):
        return f"has an invalid 'image_size' {size!r} (two whole numbers of at least 1)"
    checks = [("batch_size", config["batch_size"], 1, "a whole number of at least 1"),
              ("patience", config["patience"], 0, "a whole number of at least 0")]  # fmt: skip
    for i, stage in enumerate(config["stages"], 1):
        least = 0 if stage.get("skipped") else 1  # a stage the time budget had no time for
        checks.append((f"stages[{i}].epochs", stage["epochs"], least,
                       f"a whole number of at least {least}"))  # fmt: skip
    for key, value, low, rule in checks:
        if not _number(value, int) or value < low:
            return f"has an invalid '{key}' {value!r} ({rule})"
    for i, stage in enumerate(config["stages"], 1):
        lr = stage["lr"]
        if not _number(lr, float) or not 0.0 < lr < float("inf"):
            return f"has an invalid 'stages[{i}].lr' {lr!r} (a number above 0)"
    split = config["val_split"]
    if not 0.0 <= split < 1.0:
        return f"has an invalid 'val_split' {split!r} (a number in [0, 1))"
    return None


def _number(value: Any, kind: type) -> bool:
    """An int (or, for float, any real number), never a bool."""
    allowed = (int, float) if kind is float else (int,)
    return isinstance(value, allowed) and not isinstance(value, bool)
