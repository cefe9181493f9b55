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
Custom initializers, and unusual dtypes, are left to Keras, as is everything inside `keras_init`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["keras_init", "numpy_init", "numpy_value", "shapes_only"]

_lock = threading.Lock()
_modes: list[_Mode] = []  # the open blocks, innermost last
_original: Callable | None = None  # Keras's method, while ours is in place


class _Mode:
    def __init__(self, numpy: bool):
        self.numpy = numpy


@contextlib.contextmanager
def numpy_init(enabled: bool = True) -> Iterator[None]:
    """Inside this block, variables made from stock Keras initializers get NumPy-drawn values.

    ``enabled=False`` makes it a no-op, for callers that decide at run time. Blocks nest (the
    innermost `numpy_init` or `keras_init` decides); Keras's own method is put back when the
    last one ends. The switch is process-wide: other threads building models meanwhile get
    NumPy values too.
    """
    with _block(numpy=True) if enabled else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Inside this block, layers are built for their names and shapes only: no weight value is
    drawn, then or later. For models that are looked at and thrown away (a backbone probed
    for its layers before a run starts).

    Keras's ``StatelessScope(initialize_variables=False)`` defers the values, but keeps every
    deferred variable in a process-wide list that the next ``StatelessScope`` to end (the
    first ``fit``, a model's symbolic build) initializes with Keras's own initializers: on
    JAX, one compiled program per weight shape. Measured for ``train --recipe transfer`` on
    Lite0, its thrown-away probe cost 2.0 s of CPU there. The variables made inside the block
    are taken off that list when it ends.
    """
    import keras
    from keras.src.backend.common import global_state

    key = "uninitialized_variables"
    before = {id(v) for v in global_state.get_global_attribute(key) or []}
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        pending = global_state.get_global_attribute(key) or []
        global_state.set_global_attribute(key, [v for v in pending if id(v) in before])


@contextlib.contextmanager
def keras_init() -> Iterator[None]:
    """Keras's own initializers inside this block, even within `numpy_init`."""
    with _block(numpy=False):
        yield


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


@contextlib.contextmanager
def _block(numpy: bool) -> Iterator[None]:
    global _original
    base = _variable_base()
    mode = _Mode(numpy)
    with _lock:
        if not _modes:
            _original = original = base._initialize_with_initializer

            def _initialize_with_initializer(self, initializer):
                value = None
                if _modes and _modes[-1].numpy:
                    value = numpy_value(initializer, self._shape, self._dtype)
                if value is None:
                    return original(self, initializer)
                # With the dtype given (and matching), JAX copies the array in; without it
                # `jnp.asarray` stages it through a program compiled for each shape.
                self._initialize(self._convert_to_tensor(value, dtype=self._dtype))

            base._initialize_with_initializer = _initialize_with_initializer
        _modes.append(mode)
    try:
        yield
    finally:
        with _lock:
            _modes.remove(mode)
            if not _modes:
                base._initialize_with_initializer = _original
                _original = None


# --- the initializers ------------------------------------------------------------------------


def _rng(initializer: Any) -> np.random.Generator:
    """A generator for this call: Keras gives an integer-seeded initializer (unseeded ones get a
    random integer, see `keras.random.make_default_seed`) the same values on every call, so does
    this; one seeded by a SeedGenerator draws from NumPy's global state instead."""
    seed = getattr(initializer, "seed", None)
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = np.random.randint(2**31 - 1)  # np.random.seed / keras.utils.set_random_seed
    return np.random.default_rng(seed)


# Drawn in float32: 10-20x faster than float64 (ConvNeXtXLarge has 350M weights).
def _uniform(rng, shape, low, high):
    x = rng.random(shape, dtype=np.float32)
    x *= high - low
    x += low
    return x


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _truncated_normal(rng, shape, mean, stddev):
    """Normal values redrawn until within two standard deviations, like Keras's."""
    z = _normal(rng, shape)
    bad = np.abs(z) > 2
    while bad.any():
        z[bad] = _normal(rng, (int(bad.sum()),))
        bad = np.abs(z) > 2
    z *= stddev
    z += mean
    return z


def _random_uniform(init, shape, rng):
    return _uniform(rng, shape, init.minval, init.maxval)


def _random_normal(init, shape, rng):
    x = _normal(rng, shape)
    x *= init.stddev
    x += init.mean
    return x


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
        return _normal(rng, shape) * math.sqrt(scale)
    limit = math.sqrt(3.0 * scale)
    return _uniform(rng, shape, -limit, limit)


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
    return np.array(np.broadcast_to(np.asarray(value), shape))


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
