"""kerascope: what is in this picture, and why does the model think so?

The public API imports lazily, so ``import kerascope`` (and ``kerascope models``) stay fast.
Importing it changes nothing in the process (no environment variables): the functions import
Keras on the backend the user chose (JAX when none is chosen and TensorFlow is not installed;
see `kerascope.config.ensure_backend`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = [
    "classify",
    "evaluate",
    "explain",
    "export_model",
    "faithfulness",
    "features",
    "iter_classify",
    "list_models",
    "load_model",
    "predict",
    "train",
    "validate",
    "__version__",
]

# Public name -> module that defines it, imported on first use. No module or subpackage may
# share a public function's name (hence classification, evaluation, prediction, training):
# importing it would set the package attribute to the module, hiding the function.
_LAZY = {
    "classify": "kerascope.classification",
    "iter_classify": "kerascope.classification",
    "explain": "kerascope.cam.explain",
    "export_model": "kerascope.export",
    "faithfulness": "kerascope.cam.faithfulness",
    "features": "kerascope.bottleneck",
    "load_model": "kerascope.zoo.models",
    "train": "kerascope.training.run",
    "evaluate": "kerascope.evaluation",
    "predict": "kerascope.prediction",
    "validate": "kerascope.validation",
}

if TYPE_CHECKING:
    from kerascope.bottleneck import features
    from kerascope.cam.explain import explain
    from kerascope.cam.faithfulness import faithfulness
    from kerascope.classification import classify, iter_classify
    from kerascope.evaluation import evaluate
    from kerascope.export import export_model
    from kerascope.prediction import predict
    from kerascope.training.run import train
    from kerascope.validation import validate
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
