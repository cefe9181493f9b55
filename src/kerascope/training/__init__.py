"""Training recipes on folder datasets, into run directories (``train``), lazily imported.

``kerascope.training.train`` imports Keras; ``RECIPES`` and ``get_recipe`` need only the recipe
table (which imports the augmentation layers, hence Keras too, once the backend is chosen).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["RECIPES", "Recipe", "RunResult", "get_recipe", "train"]

_WHERE = {
    "RECIPES": "recipes",
    "Recipe": "recipes",
    "get_recipe": "recipes",
    "RunResult": "run",
    "train": "run",
}

if TYPE_CHECKING:
    from kerascope.training.recipes import RECIPES, Recipe, get_recipe
    from kerascope.training.run import RunResult, train


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"kerascope.training.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kerascope.training' has no attribute {name!r}")
