"""The forward pass for inference: uint8 RGB batch in, probabilities out.

Two engines, chosen by measurement (benchmarks/classify_cpu.py):
- ``onnx``: the Keras graph converted once to ONNX and run by onnxruntime; on a CPU this was
  ~19x faster than Keras-JAX and ~9x faster than eager PyTorch for EfficientNet-Lite0.
- ``keras``: the Keras model itself, jit-compiled on JAX, used on GPUs, for models the
  converter does not cover, and when asked for with ``KERASCOPE_ENGINE=keras``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from kerascope.zoo.models import Classifier

Forward = Callable[[np.ndarray], np.ndarray]


def _on_cpu() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    return True


def choose_engine(clf: Classifier) -> str:
    """``KERASCOPE_ENGINE`` (auto|keras|onnx) or, for auto, onnx on CPU when it can convert."""
    wanted = os.environ.get("KERASCOPE_ENGINE", "auto").lower()
    if wanted in ("keras", "onnx"):
        return wanted
    if not _on_cpu():
        return "keras"
    try:
        import onnxruntime  # noqa: F401

        from kerascope.onnx_export import supports
    except ImportError:
        return "keras"
    return "onnx" if supports(clf.model) else "keras"


def keras_forward(model) -> Forward:
    """A compiled inference function; uint8 is cast on the device, inside the graph."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def run(trainable, frozen, x):
            return model.stateless_call(trainable, frozen, x.astype("float32"), training=False)[0]

        return lambda x: np.asarray(run(trainable, frozen, x))
    if keras.backend.backend() == "torch":
        import torch

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(x.astype("float32"), training=False)
            return keras.ops.convert_to_numpy(out)

        return run_torch
    return lambda x: np.asarray(model.predict_on_batch(x.astype("float32")))


def onnx_forward(model) -> Forward:
    import onnxruntime as ort

    from kerascope.onnx_export import keras_to_onnx

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        keras_to_onnx(model), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype("float32")})[0]


def forward_fn(clf: Classifier) -> Forward:
    """The inference function for ``clf``, built once and cached on it."""
    cached = clf.extra.get("forward")
    if cached is None:
        engine = choose_engine(clf)
        cached = onnx_forward(clf.model) if engine == "onnx" else keras_forward(clf.model)
        clf.extra["forward"] = cached
        clf.extra["engine"] = engine
    return cached
