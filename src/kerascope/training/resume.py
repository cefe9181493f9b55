"""What a resumed run may change: it continues as ``config.yaml`` says, so an option given
with ``resume`` either means the same as the saved setting, is honoured (``epochs`` for stages
not finished yet, ``patience``), or is refused in one line naming it — never silently ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kerascope.errors import RunError
from kerascope.training import heads, optimizers, recipes, settings

FLAGS = {
    "data": "DATA", "recipe": "--recipe", "output": "--output", "backbone": "--backbone",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed",
    "val_split": "--val-split", "skip_bad": "--skip-bad", "class_weight": "--class-weight",
    "unfreeze": "--unfreeze", "augment": "--no-augment", "image_size": "--image-size",
    "patience": "--patience", "layer": "--layer", "pool": "--pool", "head": "--head",
    "dropout": "--dropout", "optimizer": "--optimizer", "momentum": "--momentum",
    "lr_schedule": "--lr-schedule", "weights": "--weights",
    "label_smoothing": "--label-smoothing", "mixup": "--mixup", "cutmix": "--cutmix",
    "init_from": "--init-from", "binary": "--binary", "time_budget": "--time-budget",
}  # fmt: skip
"""Arguments of ``train`` that are settings of the run, and their command-line flag."""


def apply_options(run_dir: Path, config: dict[str, Any], state: dict[str, Any],
                  given: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``config`` with the honoured options applied; RunError for any other that differs."""
    config = {**config, "stages": [dict(s) for s in config["stages"]]}
    for name, value in given.items():
        if name == "epochs":
            _extend(run_dir, config, state, value)
        elif name == "patience":
            config["patience"] = int(value)
        elif not _same(name, value, config, run_dir):
            saved = _saved(name, value, config, run_dir)
            raise RunError(f"cannot resume '{run_dir}' with {_given(name, value, config)}: the "
                           f"run was started with {saved} (config.yaml); leave the option out "
                           "to continue as configured, or start a new run")  # fmt: skip
    return config


def _extend(run_dir: Path, config: dict, state: dict, epochs: Any) -> None:
    """Epochs of the stages not finished yet (an int: each of them; a list: every stage, the
    finished ones unchanged). A stage may not end before the epochs it has already run."""
    stages = config["stages"]
    finished = int(state.get("completed_stages", 0))
    if isinstance(epochs, list | tuple):
        values = settings.per_stage(list(epochs), len(stages), "epochs", broadcast=True)
    else:
        values = [None] * finished + [epochs] * (len(stages) - finished)
    if all(v is None for v in values):
        raise RunError(f"every stage of '{run_dir}' is finished: --epochs cannot extend it; "
                       "start a new run to train longer")  # fmt: skip
    for i, value in enumerate(values):
        if value is None or int(value) == stages[i]["epochs"]:
            continue
        if i < finished:
            raise RunError(f"cannot change --epochs of stage {i + 1} of '{run_dir}': that stage "
                           f"is finished ({stages[i]['epochs']} epochs)")  # fmt: skip
        ran = _epochs_run(run_dir, config, i)
        if int(value) < max(ran, 1):
            raise RunError(f"stage {i + 1} of '{run_dir}' has already run {ran} epoch(s): give "
                           f"--epochs {max(ran, 1)} or more")  # fmt: skip
        stages[i]["epochs"] = int(value)


def _epochs_run(run_dir: Path, config: dict, index: int) -> int:
    """Epochs stage ``index`` has backed up so far."""
    from kerascope.training.checkpoints import backup_epoch

    start = sum(s["epochs"] for s in config["stages"][:index])
    done = backup_epoch(run_dir / "backup" / f"stage{index + 1}")
    return max(0, (done or start) - start)


def _same(name: str, value: Any, config: dict, run_dir: Path) -> bool:
    """Whether an option given with ``resume`` means what the run was configured with."""
    if name in ("data", "output"):
        saved = config["data"] if name == "data" else run_dir
        return Path(value).expanduser().resolve() == Path(saved).expanduser().resolve()
    if name == "recipe":
        return recipes.get_recipe(value).name == config["recipe"]
    if name == "init_from":
        return str(Path(value).expanduser().resolve()) == config.get("init_from")
    if name == "backbone":
        return settings.resolve_backbone(recipes.get_recipe(config["recipe"]), value) == \
            config["backbone"]  # fmt: skip
    if name == "lr":
        lrs = settings.per_stage(value, len(config["stages"]), "lr", broadcast=False)
        return all(v is None or float(v) == s["lr"] for v, s in zip(lrs, config["stages"],
                                                                      strict=True))  # fmt: skip
    if name in ("optimizer", "lr_schedule", "momentum"):
        return _same_stages(name, value, config)
    if name == "head":
        return heads.parse_head(value) == config.get("head")
    if name == "dropout":
        return float(value) == float(config["dropout"])
    if name == "unfreeze":
        return heads.parse_unfreeze(value) == config.get("unfreeze")
    if name == "weights":
        recipe = recipes.get_recipe(config["recipe"])
        return settings.resolve_weights(recipe, config["backbone"], value) == config.get("weights")
    if name == "image_size":
        return settings.image_sides(value) == list(config["image_size"])
    if name == "augment":
        if value is False or value is None:
            return config["augment"] is None
        return value is True or (settings.augment_record(value)
                                 == settings.augment_record(config["augment"]))  # fmt: skip
    if name == "binary":
        return bool(value) == (config.get("task") == "binary")
    if name == "time_budget":  # 0 turns it off: the same as a run without one
        return float(value or 0) == float(config.get("time_budget") or 0)
    if name == "class_weight" and isinstance(value, dict):
        value = {str(k): float(v) for k, v in value.items()}
    return value == config.get(name)


def _same_stages(name: str, value: Any, config: dict) -> bool:
    """Whether per-stage optimizer settings given with ``resume`` are the saved ones."""
    stages = config["stages"]
    if name == "momentum":  # and none without an sgd stage: a new run refuses it there
        sgd = [s for s in stages if s["optimizer"] == "sgd"]
        return bool(sgd) and all(s.get("momentum") == float(value) for s in sgd)
    key, broadcast = ("optimizer", False) if name == "optimizer" else ("schedule", True)
    values = settings.per_stage(settings.listed(value), len(stages), name, broadcast=broadcast)
    check = optimizers.check_optimizer if key == "optimizer" else optimizers.check_schedule
    return all(v is None or check(v) == s.get(key) for v, s in zip(values, stages, strict=True))


def _saved(name: str, value: Any, config: dict, run_dir: Path) -> str:
    if name == "output":
        return f"output {run_dir}"
    if name == "augment" and dataclasses.is_dataclass(value) and config["augment"]:
        return " ".join(_augment_flag(k, config["augment"][k]) for k in _changed(value, config))
    if name == "augment":
        return "augmentation" if config["augment"] else "no augmentation"
    if name == "binary":
        return f"a {config.get('task') or 'multiclass'} head"
    if name == "time_budget" and not config.get("time_budget"):
        return f"no time budget (epochs from the {config.get('epochs_rule') or 'recipe'})"
    if name == "lr":
        return "lr " + ", ".join(f"{s['lr']:g}" for s in config["stages"])
    if name in ("optimizer", "momentum"):
        return ", then ".join(optimizers.describe(s) for s in config["stages"])
    if name == "lr_schedule":
        return "schedule " + ", ".join(s.get("schedule") or "constant" for s in config["stages"])
    if name == "head":
        return "head " + ",".join(config.get("head") or ["(default)"])
    return f"{name} {_show(config.get(name))}"


def _given(name: str, value: Any, config: dict) -> str:
    """The option as it was given on the command line."""
    if name in ("augment", "skip_bad", "binary") and isinstance(value, bool):
        return FLAGS[name] if value != (name == "augment") else f"{name}={value}"
    if name == "augment" and dataclasses.is_dataclass(value):  # --rotation 5 and the like
        fields = dataclasses.asdict(value)
        return " ".join(_augment_flag(k, fields[k]) for k in _changed(value, config))
    return f"{FLAGS[name]} {_show(value)}"


def _changed(augment: Any, config: dict) -> list[str]:
    """The augmentation fields ``augment`` sets otherwise than the run (all, without one)."""
    fields = settings.augment_record(augment)
    saved = settings.augment_record(config["augment"] or settings.NO_AUGMENT)
    return [k for k, v in fields.items() if k not in saved or saved[k] != v] or list(fields)


def _augment_flag(field: str, value: Any) -> str:
    """An `AugmentConfig` field as its train option: ``--rotation 5``, ``--no-flip``."""
    if field == "horizontal_flip":
        return "--no-flip" if not value else "flips"
    flag = "--augment-policy" if field == "policy" else "--" + field.replace("_", "-")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return f"{flag} {value:g}" if number else f"{flag} {_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    return repr(value)


def what_resumes(run_dir: Path, stages: int) -> str:
    """What a resume continues from after a stop, read from the backups (not from the state,
    which an epoch records before its backup is written): in the setup, an epoch or the
    finishing steps alike."""
    from kerascope.rundir import read_state
    from kerascope.training.checkpoints import backup_epoch

    then = f"`kerascope train --resume {run_dir}`"
    if not (run_dir / "config.yaml").is_file():
        return "nothing of the run is saved yet; run the same command again"
    try:
        state = read_state(run_dir)
        done = int(state.get("completed_stages") or 0)
        epoch = backup_epoch(run_dir / "backup" / f"stage{done + 1}")
    except (RunError, OSError):
        return f"continue with {then}"
    if state.get("status") == "done":
        return f"the run had finished: its model is '{run_dir / 'model.keras'}'"
    if done >= stages:
        return f"every stage is trained and saved; {then} writes the model and report"
    if epoch:
        return f"epoch {epoch} is saved; continue with {then}"
    if done:
        return f"stage {done} is saved; continue with {then}"
    return f"before the first epoch finished: nothing trained is saved; {then} starts it again"
