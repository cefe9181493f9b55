"""kerascope: what is in this picture, and why does the model think so?

The public API imports lazily, so ``import kerascope`` (and ``kerascope models``) stay fast.
Importing it changes nothing in the process (no environment variables): the functions import
Keras on the backend the user chose (JAX when none is chosen and TensorFlow is not installed;
see `kerascope.config.ensure_backend`).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = [
    "classify",
    "evaluate",
    "explain",
    "features",
    "list_models",
    "load_model",
    "predict",
    "train",
    "__version__",
]

# Public name -> module that defines it, imported on first use. No module of the package may
# share a public function's name (hence classification / evaluation / prediction), except the
# ``train`` subpackage: see _Package.
_LAZY = {
    "classify": "kerascope.classification",
    "explain": "kerascope.cam.explain",
    "features": "kerascope.bottleneck",
    "load_model": "kerascope.zoo.models",
    "train": "kerascope.train.run",
    "evaluate": "kerascope.evaluation",
    "predict": "kerascope.prediction",
}

if TYPE_CHECKING:
    from kerascope.bottleneck import features
    from kerascope.cam.explain import explain
    from kerascope.classification import classify
    from kerascope.evaluation import evaluate
    from kerascope.prediction import predict
    from kerascope.train.run import train
    from kerascope.zoo.models import load_model


def list_models():
    """All zoo specs (plain data; nothing is built)."""
    from kerascope.zoo.registry import all_specs

    return all_specs()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerascope' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The public function wins over a same-named submodule (``kerascope.train``).

    Importing ``kerascope.train.run`` makes the import system set the attribute ``train`` of
    this package to the subpackage, after which ``kerascope.train(...)`` would be a module, not
    the function, depending on what happened to be imported first. That one assignment is
    dropped here; the subpackage stays importable (``from kerascope.train import recipes``,
    ``sys.modules``), but not reachable as ``kerascope.train.<name>``.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
