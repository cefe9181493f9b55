"""Reduced precision, one mechanism for every compiled call: a mixed-policy clone of the model.

Inference (`kerascope.inference.compiled`, every backend), the Grad-CAM device path
(`kerascope.cam.gradients`) and the pixel attribution methods (`kerascope.cam.pixel_device`) on
JAX all run a model in bfloat16 or float16 the same way: `precision_runner` gives a clone of the
model whose layers compute under Keras's ``mixed_bfloat16`` / ``mixed_float16`` policy, and the
model whose float32 variables that clone is fed on every call (``stateless_call`` with the
original's current values, so the clone never goes stale). On torch the two explain paths run
the model itself under ``torch.autocast`` (also private to the call: no policy is switched).

Why a clone, and not the user's layers switched to the mixed policy while a function traces
(what explain did before): the switch is visible to every other thread that traces the same
layers meanwhile (``kerascope serve`` traces classify and the expensive explain methods on two
threads over one model), so a float32 compile could pick up reduced-precision layers; a clone
is private to its caller. It also leaves the layers that produce the model's outputs in float32
(a classifier's softmax, a CAM probe's target activations), as Keras's mixed-precision guide
advises.
"""

from __future__ import annotations

import threading
from typing import Any

_ATTR = "_kerascope_mixed_clones"  # per-model cache, on the model: freed with it
_LOCK = threading.Lock()


def mixed_clone(model: Any, precision: str) -> Any:
    """``model`` rebuilt under the mixed policy of ``precision`` (``mixed_bfloat16`` ...).

    Every layer computes in the reduced type except the input layers and the layers whose
    outputs are the model's (a classifier's softmax stays float32, as Keras's mixed-precision
    guide advises); nested functional models are rebuilt alike. Variables stay float32 and are
    copied from ``model``. Why a clone: a Keras layer's policy is fixed when it is built, and
    changing the user's model in place would change it for training and saving too.
    """
    import keras

    from kerascope.precision import dtype_policy
    from kerascope.zoo.fast_init import numpy_init

    policy = dtype_policy(precision)
    keep = set()
    for tensor in keras.tree.flatten(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            keep.add(id(history[0]))

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(config)
        config["dtype"] = "float32" if id(layer) in keep else policy
        return layer.__class__.from_config(config)

    with numpy_init():  # the clone's own initial values are replaced right away
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def same_variables(a: list, b: list) -> bool:
    """Whether two variable lists line up one to one (shapes and dtypes)."""
    return len(a) == len(b) and all(
        tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype for x, y in zip(a, b, strict=True)
    )


def precision_runner(model: Any, precision: str) -> tuple[Any, Any]:
    """``(runner, source)``: the model to call in ``precision`` (a resolved name:
    ``float32``, ``bfloat16``, ``float16``) and the model whose variables to pass it
    (``stateless_call(source's trainable values, source's non-trainable values, ...)``).

    float32: the model itself, twice. Reduced: its `mixed_clone`, built once per model and
    precision and cached on the model, fed the original's current variables when they line up
    (they do for any functional model), so it follows a trainer's updates; else its own copy.
    """
    if precision == "float32":
        return model, model
    with _LOCK:
        cache = vars(model).get(_ATTR)
        if cache is None:
            cache = {}
            # object.__setattr__: past Keras's attribute tracking and torch.nn.Module's hooks.
            object.__setattr__(model, _ATTR, cache)
        if precision not in cache:
            runner = mixed_clone(model, precision)
            lined_up = same_variables(
                runner.trainable_variables, model.trainable_variables
            ) and same_variables(runner.non_trainable_variables, model.non_trainable_variables)
            cache[precision] = (runner, model if lined_up else runner)
        return cache[precision]


def forget_clones(model: Any) -> None:
    """Drop ``model``'s cached clones (`kerascope.inference.forget` calls it)."""
    with _LOCK:
        vars(model).pop(_ATTR, None)
