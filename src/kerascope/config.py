"""Backend choice and cache locations, decided before Keras is imported."""

from __future__ import annotations

import os
from pathlib import Path

# On CPU the JAX backend measured fastest for EfficientNet-Lite inference on the 2-core
# reference machine (see benchmarks/classify_cpu.py); JAX is also the GPU default.
DEFAULT_BACKEND = "jax"


def ensure_backend() -> str:
    """Pick the Keras backend once, honouring ``KERAS_BACKEND`` when the user set it."""
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    # Keras prints a line for every import of the TF-less JAX backend otherwise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return os.environ["KERAS_BACKEND"]


def cache_dir() -> Path:
    """Where ported and downloaded weights live.

    ``KERASCOPE_HOME`` wins; otherwise Keras's own cache (``$KERAS_HOME/models`` or
    ``~/.keras/models``), so weights fetched by plain Keras are reused and vice versa.
    """
    if os.environ.get("KERASCOPE_HOME"):
        return Path(os.environ["KERASCOPE_HOME"]).expanduser()
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "models"
