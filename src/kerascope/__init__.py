"""kerascope: what is in this picture, and why does the model think so?

The public API imports lazily, so ``import kerascope`` (and ``kerascope models``) stay fast.
Importing it changes nothing in the process (no environment variables): the functions import
Keras on the backend the user chose (JAX when none is chosen and TensorFlow is not installed;
see `kerascope.config.ensure_backend`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["classify", "explain", "features", "load_model", "list_models", "__version__"]

if TYPE_CHECKING:
    from kerascope.bottleneck import features
    from kerascope.cam.explain import explain
    from kerascope.predict import classify
    from kerascope.zoo.models import load_model


def list_models():
    """All zoo specs (plain data; nothing is built)."""
    from kerascope.zoo.registry import all_specs

    return all_specs()


def __getattr__(name: str):
    if name == "classify":
        from kerascope.predict import classify

        return classify
    if name == "explain":
        from kerascope.cam.explain import explain

        return explain
    if name == "features":
        from kerascope.bottleneck import features

        return features
    if name == "load_model":
        from kerascope.zoo.models import load_model

        return load_model
    raise AttributeError(f"module 'kerascope' has no attribute {name!r}")
