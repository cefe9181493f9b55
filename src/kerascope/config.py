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
    if os.environ["KERAS_BACKEND"] == "jax":
        _persistent_jax_cache()
    return os.environ["KERAS_BACKEND"]


def _persistent_jax_cache() -> None:
    """Keep XLA compilations across processes.

    Building a network on JAX compiles every weight initializer shape (~500 tiny programs for
    EfficientNet-Lite0): measured `kerascope classify` cold start 15-18 s without this cache,
    4.5-5 s with it. Users' own JAX_* settings win.
    """
    home = os.environ.get("KERASCOPE_HOME")
    base = Path(home).expanduser() if home else Path("~/.cache/kerascope").expanduser()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(base / "jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def cache_dir() -> Path:
    """Where ported and downloaded weights live.

    ``KERASCOPE_HOME`` wins; otherwise Keras's own cache (``$KERAS_HOME/models`` or
    ``~/.keras/models``), so weights fetched by plain Keras are reused and vice versa.
    """
    if os.environ.get("KERASCOPE_HOME"):
        return Path(os.environ["KERASCOPE_HOME"]).expanduser()
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "models"
