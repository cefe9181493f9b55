"""Build Keras models without compiling their weight initializers.

On JAX each Keras initializer runs eagerly, and every new weight shape compiles its own small
XLA program: building a zoo network means hundreds of compilations (EfficientNetB0 took 34 s to
build on the 2-core reference machine, 1.6 s with its weights drawn by NumPy). Inside
`numpy_init` the stock Keras initializers draw their values with NumPy instead, from the same
distributions (Glorot/He/LeCun scaling, truncation at two standard deviations, orthogonal
matrices, zeros, ones, constants), so a random-weight model stays a sensible random model.

Use it where the values do not matter or are about to be replaced: random-weight models in tests,
and building a network whose weights are then loaded from a file.

Example:
    >>> with numpy_init():
    ...     model = keras.applications.ResNet50(weights=None)

Initializers with an integer seed give the same values for the same seed and shape, as they do
in Keras (not the same numbers as Keras); unseeded ones follow `keras.utils.set_random_seed`.
Custom initializers, and unusual dtypes, are left to Keras.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["numpy_init", "numpy_value"]

_lock = threading.Lock()
_depth = 0
_original: Callable | None = None


@contextlib.contextmanager
def numpy_init(enabled: bool = True) -> Iterator[None]:
    """Inside this block, variables made from stock Keras initializers get NumPy-drawn values.

    ``enabled=False`` makes it a no-op, for callers that decide at run time. Nested and
    concurrent blocks are fine; the Keras behaviour comes back when the outermost one ends.
    """
    if not enabled:
        yield
        return
    base = _variable_base()
    _enter(base)
    try:
        yield
    finally:
        _exit(base)


def numpy_value(initializer: Any, shape: tuple[int, ...], dtype: str = "float32"):
    """What `numpy_init` puts in a variable: a NumPy array, or None where Keras must draw it."""
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:  # bfloat16 and friends: not worth a special case
        return None
    draw = _handler(initializer)
    if draw is None:
        return None
    is_random = draw in _RANDOM
    if is_random and not np.issubdtype(np_dtype, np.floating):
        return None
    shape = tuple(int(d) for d in shape)
    value = draw(initializer, shape, _rng(initializer) if is_random else None)
    return None if value is None else np.asarray(value, dtype=np_dtype).reshape(shape)


def _variable_base():
    from kerascope.config import ensure_backend

    ensure_backend()
    import keras  # noqa: F401  (sets up the backend before the private module is read)
    from keras.src.backend.common.variables import Variable

    return Variable


def _enter(base) -> None:
    global _depth, _original
    with _lock:
        if _depth == 0:
            _original = base._initialize_with_initializer
            original = _original

            def _initialize_with_initializer(self, initializer):
                value = numpy_value(initializer, self._shape, self._dtype)
                if value is None:
                    return original(self, initializer)
                # With the dtype given (and matching), JAX copies the array in; without it
                # `jnp.asarray` stages it through a program compiled for each shape.
                self._initialize(self._convert_to_tensor(value, dtype=self._dtype))

            base._initialize_with_initializer = _initialize_with_initializer
        _depth += 1


def _exit(base) -> None:
    global _depth, _original
    with _lock:
        _depth -= 1
        if _depth == 0:
            base._initialize_with_initializer = _original
            _original = None


# --- the initializers ------------------------------------------------------------------------


def _rng(initializer: Any):
    """A generator for this call: Keras gives an integer-seeded initializer the same values on
    every call, so does this; unseeded ones (a SeedGenerator) use NumPy's global state."""
    seed = getattr(initializer, "seed", None)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return np.random.default_rng(seed)
    return np.random  # its global state, which keras.utils.set_random_seed seeds


def _normal(rng, shape):
    return rng.standard_normal(shape)


def _truncated_normal(rng, shape, mean, stddev):
    """Normal values redrawn until within two standard deviations, like Keras's."""
    z = np.asarray(_normal(rng, shape), dtype=np.float64)
    bad = np.abs(z) > 2
    while bad.any():
        z[bad] = _normal(rng, (int(bad.sum()),))
        bad = np.abs(z) > 2
    return mean + stddev * z


def _random_uniform(init, shape, rng):
    return rng.uniform(init.minval, init.maxval, shape)


def _random_normal(init, shape, rng):
    return init.mean + init.stddev * _normal(rng, shape)


def _truncated(init, shape, rng):
    return _truncated_normal(rng, shape, init.mean, init.stddev)


def _variance_scaling(init, shape, rng):
    from keras.src.initializers.random_initializers import compute_fans

    fan_in, fan_out = compute_fans(shape, input_axes=init.input_axes, output_axes=init.output_axes)
    scale = init.scale
    if init.mode == "fan_in":
        scale /= max(1.0, fan_in)
    elif init.mode == "fan_out":
        scale /= max(1.0, fan_out)
    else:
        scale /= max(1.0, (fan_in + fan_out) / 2.0)
    if init.distribution == "truncated_normal":
        return _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
    if init.distribution == "untruncated_normal":
        return math.sqrt(scale) * _normal(rng, shape)
    limit = math.sqrt(3.0 * scale)
    return rng.uniform(-limit, limit, shape)


def _orthogonal(init, shape, rng):
    if len(shape) < 2:
        return None  # Keras raises its own error
    rows, cols = math.prod(shape[:-1]), shape[-1]
    q, r = np.linalg.qr(_normal(rng, (max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return init.gain * q.reshape(shape)


def _zeros(init, shape, rng):
    return np.zeros(shape)


def _ones(init, shape, rng):
    return np.ones(shape)


def _constant(init, shape, rng):
    value = init.value
    if not isinstance(value, (int, float, np.number, np.ndarray, list, tuple)):
        return None  # a tensor or a serialized object: let Keras handle it
    return np.asarray(value, dtype=np.float64) * np.ones(shape)


def _identity(init, shape, rng):
    return None if len(shape) != 2 else init.gain * np.eye(*shape)


_RANDOM = {_random_uniform, _random_normal, _truncated, _variance_scaling, _orthogonal}


def _handlers() -> dict[type, Callable]:
    from keras import initializers as ki

    return {
        ki.RandomUniform: _random_uniform,
        ki.RandomNormal: _random_normal,
        ki.TruncatedNormal: _truncated,
        ki.VarianceScaling: _variance_scaling,  # Glorot, He and LeCun subclass it
        ki.Orthogonal: _orthogonal,
        ki.Zeros: _zeros,
        ki.Ones: _ones,
        ki.Constant: _constant,
        ki.Identity: _identity,
    }


_HANDLERS: dict[type, Callable] | None = None


def _handler(initializer: Any) -> Callable | None:
    """The draw for the class whose ``__call__`` this initializer runs, if it is a stock one
    (a subclass that overrides ``__call__`` is custom and left to Keras)."""
    global _HANDLERS
    if _HANDLERS is None:
        _HANDLERS = _handlers()
    for cls in type(initializer).__mro__:
        if "__call__" in cls.__dict__:
            return _HANDLERS.get(cls)
    return None
