"""kerascope: what is in this picture, and why does the model think so?

The public API imports lazily, so ``import kerascope`` (and ``kerascope models``) stay fast and
the Keras backend is chosen before Keras is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerascope.config import ensure_backend

__version__ = "0.1.0"
__all__ = ["classify", "explain", "features", "load_model", "list_models", "__version__"]

ensure_backend()

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
