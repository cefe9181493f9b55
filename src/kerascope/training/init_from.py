"""``train --init-from RUN``: start a run from the weights of an earlier one.

The seed's VGG16 fine-tuning loads the classifier head it trained on bottleneck features before
unfreezing the top of the backbone: a head that already separates the classes keeps the first
fine-tuning steps from wrecking the backbone with large random gradients. Here any earlier run
(or ``.keras`` file) whose layers share names with the new model gives them their weights: the
head of a ``transfer`` run, and the backbone too when it was fine-tuned. Layers are matched by
name at the top level of the model (the backbone is one nested layer); a layer with the same
name but other shapes (another number of classes, another backbone) stops the run before
anything is written, in one line naming the layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kerascope.errors import ConfigError


def resolve_init_from(source: str | os.PathLike | None) -> str | None:
    """The absolute path of an earlier run directory or ``.keras`` file (None: none), or one
    line saying what is missing."""
    if source is None:
        return None
    path = Path(source).expanduser().resolve()
    model = path / "model.keras" if path.is_dir() else path
    if not model.is_file():
        hint = " (a run that has not finished has none yet)" if path.is_dir() else ""
        raise ConfigError(f"--init-from '{source}': no model file at '{model}'{hint}")
    return str(path)


def load_init_weights(model: Any, source: str | os.PathLike, classes: list[str]) -> list[str]:
    """Copy into ``model`` the weights of every top-level layer of ``source``'s model with
    the same name and shapes; return the names copied.

    Raises:
        ConfigError: a layer of both has other weight shapes (named, with both shapes); the
            earlier run's classes differ from ``classes`` (its head would answer for others);
            or no layer with weights matches at all.
    """
    from kerascope.zoo.models import load_model

    earlier = load_model(source)
    theirs = [name for _, name in earlier.labels]
    if len(theirs) == len(classes) and theirs != list(classes):
        raise ConfigError(f"--init-from '{source}': its classes {theirs} are not this "
                          f"dataset's {list(classes)} in the same order, so its head would "
                          "answer for other classes")  # fmt: skip
    old = {layer.name: layer for layer in earlier.model.layers if layer.weights}
    copied = []
    for layer in model.layers:
        if not layer.weights or layer.name not in old:
            continue
        mine = [tuple(w.shape) for w in layer.weights]
        given = [tuple(w.shape) for w in old[layer.name].weights]
        if mine != given:
            raise ConfigError(f"--init-from '{source}': layer '{layer.name}' has weights "
                              f"{_shapes(given)} there but {_shapes(mine)} in this model "
                              f"({_why(layer.name, earlier, classes)})")  # fmt: skip
        layer.set_weights(old[layer.name].get_weights())
        copied.append(layer.name)
    if not copied:
        raise ConfigError(f"--init-from '{source}': none of its layers "
                          f"({', '.join(old) or 'none with weights'}) is in this model; give a "
                          "run of the same recipe family and backbone")  # fmt: skip
    return copied


def _shapes(shapes: list[tuple]) -> str:
    return ", ".join("x".join(str(d) for d in s) for s in shapes[:2]) + (
        ", ..." if len(shapes) > 2 else "")  # fmt: skip


def _why(name: str, earlier: Any, classes: list[str]) -> str:
    if len(earlier.labels) != len(classes):
        return f"it was trained for {len(earlier.labels)} classes, this dataset has {len(classes)}"
    return "another backbone or head: start from a run with the same --backbone and --head"
