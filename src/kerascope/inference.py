"""The one inference core: ``compiled(model)`` runs any Keras (sub)model on the best engine.

Every inference forward pass in kerascope goes through here: a full classifier (``classify``,
``video``), a feature body (``features``), a CAM probe cut at the target layer, a frozen
backbone prefix in the split trainer. Two engines, chosen by measurement
(benchmarks/classify_cpu.py):

- ``onnx``: the Keras graph converted to ONNX (``kerascope.onnx_export``) and run by
  onnxruntime; on a CPU this was ~19x faster than Keras-JAX for EfficientNet-Lite0. The
  converted graph is cached on disk (``kerascope.onnx_export.cache``), so a new process skips
  the conversion. Weights are baked into the graph: the forward is a **snapshot** of the weights
  at ``compiled()`` time; call :func:`forget` after changing them. It computes in float32.
- ``keras``: the Keras model itself, jit-compiled on JAX with the uint8 -> float cast inside
  the jitted function (so batches cross to the device as uint8). It reads the model's
  **current** variable values on every call, so it stays right while a trainer updates them.
  Used on GPUs, for models the converter does not cover, for reduced precision, and when asked
  for. On JAX every batch is padded to a **bucket** (:func:`bucket`: the job's batch size for
  every batch of a job longer than one batch, else a power of two), so a process compiles each
  model once per bucket, never once per odd last batch. The padded rows' outputs are copied
  back with the others and dropped on the host (slicing them off on the device would compile
  a slice per batch length, to save copying a few rows). ``top_k`` runs the model and the
  top-k selection as one compiled function: only k values and indices per image leave the
  device.

Precision (``kerascope.precision``): ``compiled(model, precision="bfloat16")`` runs a clone of
the model (`kerascope.mixed_precision`, the one mechanism explain uses too) under Keras's
``mixed_bfloat16`` policy (``mixed_float16`` likewise): activations and matrix products in
the reduced type, the variables float32 (read from the original model on each call, so the
clone never goes stale), and the layers that produce the model's outputs (the softmax) in
float32. On a CPU with bfloat16 units, bfloat16 runs on OpenVINO instead.

- ``openvino``: the same converted graph run by OpenVINO (optional package;
  ``kerascope.engines``), in float32 or, on CPUs with bf16 units, bfloat16. A snapshot too.

``KERASCOPE_ENGINE`` (auto|keras|onnx|openvino) overrides the choice; auto is keras off the CPU
and `kerascope.engines.cpu_engine` on it (onnx for float32 unless a measurement on this CPU
model found OpenVINO faster; keras for models the converter does not support).

Images reach it as batches from `kerascope.sources`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kerascope.device_fit import DeviceFit, device_fit, fit_on_device  # noqa: F401  (API)
from kerascope.engines import ENGINES, GRAPH_ENGINES, check_graph_precision, cpu_engine
from kerascope.errors import KerascopeError
from kerascope.mixed_precision import (  # noqa: F401  (mixed_clone: part of this API)
    forget_clones,
    mixed_clone,
    precision_runner,
)
from kerascope.precision import resolve_precision
from kerascope.sources import bucket
from kerascope.topk import host_top_k, torch_top_k

ENV_VAR = "KERASCOPE_ENGINE"
_ATTR = "_kerascope_forwards"  # per-model cache, on the model: freed with it (no global leak)

Batch = np.ndarray | Sequence[np.ndarray]
Output = np.ndarray | list[np.ndarray]


class EngineError(KerascopeError, ValueError):
    """An engine name that is not auto, keras, onnx or openvino."""


class Pending:
    """Outputs dispatched to the device and not yet copied back (JAX and CUDA run
    asynchronously): ``result()`` waits for them and returns the first ``rows`` rows as NumPy
    arrays (``to_numpy`` converts one output: ``np.asarray`` suits JAX and NumPy); rows a
    bucket padded are copied back too and sliced off on the host.

    torch CUDA tensors are copied back now, behind the kernels that compute them (into pinned
    memory, an event to wait on): a copy queued at ``result()`` would wait for whatever the
    device was given meanwhile, the next batch included. (JAX copies on its own stream.)"""

    def __init__(
        self,
        outs: list,
        rows: int,
        single: bool,
        to_numpy: Callable[[Any], np.ndarray] = np.asarray,
    ):
        self._ready = None
        if any(getattr(o, "is_cuda", False) for o in outs):
            outs, self._ready = _copy_back_queued(outs)
        self._outs = outs
        self._rows = rows
        self._single = single
        self._to_numpy = to_numpy

    def result(self) -> Any:
        if self._ready is not None:
            self._ready()
        outs = [self._to_numpy(o)[: self._rows] for o in self._outs]
        return outs[0] if self._single else outs


def _copy_back_queued(outs: list) -> tuple[list, Callable[[], None]]:
    """torch CUDA tensors -> CPU tensors being filled by copies queued now, and the wait."""
    import torch

    device = next(o.device for o in outs if getattr(o, "is_cuda", False))
    copies = [o.detach().to("cpu", non_blocking=True) if getattr(o, "is_cuda", False) else o
              for o in outs]  # fmt: skip
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))  # where the copies were queued (not cuda:0)
    return copies, done.synchronize


class Forward:
    """A compiled forward pass: ``fwd(x)`` -> one array, or a list for a multi-output model.

    Attributes:
        engine: ``"onnx"``, ``"openvino"`` or ``"keras"``.
        name: the model's name, for messages and reports.
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``: what it computes in.
        snapshot: True when the weights were copied in at compile time (onnx, openvino):
            changing the model's weights afterwards needs :func:`forget` and a new
            :func:`compiled`.
        pads: True when batches are padded to a :func:`bucket` (the JAX engine).
    """

    def __init__(
        self,
        run: Callable[[list], list],
        engine: str,
        name: str,
        *,
        precision: str = "float32",
        top_k: Callable[[list, int], list] | None = None,
        fit_top_k: Callable[[list, int, DeviceFit], list] | None = None,
        pads: bool = False,
        traces: list[int] | None = None,
        to_numpy: Callable[[Any], np.ndarray] = np.asarray,
    ):
        self._run = run
        self._to_numpy = to_numpy
        self._top_k = top_k
        self._fit_top_k = fit_top_k
        self._traces = traces if traces is not None else [0]
        self.engine = engine
        self.name = name
        self.precision = precision
        self.snapshot = engine in GRAPH_ENGINES
        self.pads = pads

    @property
    def fits_on_device(self) -> bool:
        """Whether :meth:`start_top_k` takes ``fit=``: pictures of any one size fitted to the
        model's input inside the compiled function (the JAX engine)."""
        return self._fit_top_k is not None

    @property
    def compilations(self) -> int:
        """How many times its compiled functions were traced (= compiled) in this process:
        one per bucket and output kind (outputs, or top-k for each k). 0 on onnx."""
        return self._traces[0]

    def rows(self, n: int, batch_size: int | None = None, job: int | None = None) -> int:
        """The rows a batch of ``n`` runs at: its :func:`bucket` when this engine pads, else n
        (``job``: the inputs of the whole job, so a last batch runs at ``batch_size``)."""
        return bucket(n, batch_size, job=job) if self.pads else n

    def _inputs(self, x: Batch, batch_size: int | None, job: int | None) -> tuple[list, int]:
        xs = list(x) if isinstance(x, list | tuple) else [x]
        n = int(xs[0].shape[0])
        rows = self.rows(n, batch_size, job) if n else n
        if rows != n:
            xs = [_pad_rows(a, rows) for a in xs]
        return xs, n

    def __call__(self, x: Batch, batch_size: int | None = None, job: int | None = None) -> Output:
        """Run a batch: (N, ...) uint8 or float; a list of arrays for a multi-input model.

        ``batch_size``: the job's batch size, and ``job`` its number of inputs, which pick
        the bucket an odd batch is padded to (see :func:`bucket`: the last batch of a job
        longer than one batch runs at ``batch_size``); padded rows never come back.

        Returns:
            float32 outputs (int32 ones stay int32) in the Keras layout: one array for a
            single-output model, else a list in ``model.outputs`` order.
        """
        return self.start(x, batch_size, job).result()

    def start(self, x: Batch, batch_size: int | None = None, job: int | None = None) -> Pending:
        """``self(x)`` dispatched without waiting: the caller prepares the next batch while the
        device computes this one, then calls ``.result()``."""
        xs, n = self._inputs(x, batch_size, job)
        outs = list(self._run(xs))
        return Pending(outs, n, len(outs) == 1, self._to_numpy)

    def top_k(
        self, x: Batch, k: int, batch_size: int | None = None, job: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest values of the (first) output per row, largest first, and their
        indices: ``(values float32 (N, k), indices int32 (N, k))``; ties to the lower index."""
        return self.start_top_k(x, k, batch_size, job=job).result()

    def start_top_k(
        self,
        x: Batch,
        k: int,
        batch_size: int | None = None,
        fit: DeviceFit | None = None,
        job: int | None = None,
    ) -> Pending:
        """:meth:`top_k` dispatched without waiting. On the JAX engine model and selection are
        one compiled function, so only ``2 * k`` numbers per image are copied back.

        ``fit`` (:func:`device_fit`; needs :attr:`fits_on_device`): ``x`` holds uint8 pictures
        of one size, which the same compiled function fits to the model's input first."""
        xs, n = self._inputs(x, batch_size, job)
        if fit is not None:
            if self._fit_top_k is None:
                raise ValueError(f"the {self.engine} engine does not fit pictures on the device")
            return Pending(list(self._fit_top_k(xs, int(k), fit)), n, False, self._to_numpy)
        if self._top_k is not None:
            return Pending(list(self._top_k(xs, int(k))), n, False, self._to_numpy)
        out = self._to_numpy(self._run(xs)[0])
        return Pending(list(host_top_k(out, int(k))), n, False)

    def __repr__(self) -> str:
        return f"<Forward {self.name!r} on {self.engine} in {self.precision}>"


def _pad_rows(a: Any, rows: int) -> Any:
    """``a`` with zero rows appended up to ``rows`` (NumPy on the host, else on its device)."""
    n = int(a.shape[0])
    if isinstance(a, np.ndarray):
        out = np.zeros((rows, *a.shape[1:]), a.dtype)
        out[:n] = a
        return out
    import keras

    pad = keras.ops.zeros((rows - n, *a.shape[1:]), dtype=a.dtype)
    return keras.ops.concatenate([a, pad], axis=0)


def on_cpu() -> bool:
    """Whether the Keras backend computes on the CPU (`kerascope.batch_sizes.device_kind`)."""
    from kerascope.batch_sizes import device_kind

    return device_kind() == "cpu"


def requested_engine(engine: str | None = None) -> str:
    """The engine asked for: ``engine``, else ``KERASCOPE_ENGINE``, else ``"auto"`` (checked)."""
    wanted = (engine or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if wanted not in ENGINES:
        source = "engine" if engine else ENV_VAR
        raise EngineError(f"{source}={wanted!r} is not an engine; use one of {', '.join(ENGINES)}")
    return wanted


def choose_engine(model: Any, engine: str | None = None, precision: str = "float32") -> str:
    """The engine ``compiled(model)`` would use: ``engine``, else ``KERASCOPE_ENGINE``, else auto.

    Auto is keras off the CPU; on a CPU it is `kerascope.engines.cpu_engine`: for float32
    onnxruntime (OpenVINO where a measurement on this CPU model found it faster), for bfloat16
    OpenVINO on CPUs with bf16 units, keras otherwise and for models the converter does not
    support (a cheap walk over the graph, nothing is converted). A graph engine asked for with
    a precision it cannot compute here is refused in one line.
    """
    wanted = requested_engine(engine)
    precision = resolve_precision(precision)
    if precision == "int8":  # a graph that measured close to float32, or one line refusing it
        from kerascope.quantize import int8_engine

        return int8_engine(model, wanted, on_cpu())
    if wanted in GRAPH_ENGINES:
        check_graph_precision(wanted, precision)
        return wanted
    if wanted == "keras" or not on_cpu():
        return "keras"
    try:
        return cpu_engine(model, precision)
    except ImportError:  # the converter's own dependency (onnx) is missing
        return "keras"


def _cache(model: Any) -> dict[str, Forward]:
    cache = vars(model).get(_ATTR)
    if cache is None:
        cache = {}
        # object.__setattr__: past Keras's attribute tracking and torch.nn.Module's hooks.
        object.__setattr__(model, _ATTR, cache)
    return cache


def _key(engine: str, precision: str) -> str:
    return engine if precision == "float32" else f"{engine}:{precision}"


def compiled(model: Any, engine: str | None = None, precision: str | None = "float32") -> Forward:
    """The forward pass of ``model`` on the best engine, built once per model and precision.

    Works for any functional (sub)model: a full classifier, a backbone prefix cut at an
    intermediate layer, a model with several outputs, a model whose inputs are intermediate
    tensors of another.

    Args:
        model: a Keras 3 model with one or more inputs (RGB 0..255 images for zoo models).
        engine: ``"auto"``, ``"keras"``, ``"onnx"`` or ``"openvino"``; default
            ``KERASCOPE_ENGINE`` or auto (:func:`choose_engine`).
        precision: ``"float32"`` (the default), ``"bfloat16"``, ``"float16"`` or ``"auto"``
            (`kerascope.precision.resolve_precision`; None reads ``KERASCOPE_PRECISION``).

    Returns:
        A :class:`Forward`: ``fwd(x)`` takes uint8 or float batches and returns float32 numpy
        output(s); ``fwd.engine`` and ``fwd.precision`` say what runs it. The onnx engine
        snapshots the weights (see :func:`forget`); the keras engine reads the current ones on
        each call.

    Example:
        >>> fwd = compiled(keras.Model(backbone.input, backbone.get_layer("block_3").output))
        >>> fwd(np.zeros((8, 224, 224, 3), np.uint8)).shape, fwd.engine  # doctest: +SKIP
        ((8, 28, 28, 40), 'onnx')
    """
    cache = _cache(model)
    wanted = requested_engine(engine)
    precision = resolve_precision(precision)
    asked = _key(wanted, precision)
    if asked not in cache:
        kind = choose_engine(model, wanted, precision)
        key = _key(kind, precision)
        if key not in cache:
            name = getattr(model, "name", "model")
            if precision == "int8":
                from kerascope.quantize import int8_runner

                cache[key] = Forward(int8_runner(model, kind), kind, name, precision="int8")
            elif kind == "onnx":
                cache[key] = _onnx_forward(model, name)
            elif kind == "openvino":
                cache[key] = _openvino_forward(model, name, precision)
            else:
                cache[key] = _keras_forward(model, name, precision)
        cache[asked] = cache[key]
    return cache[asked]


def engine_name(model: Any, engine: str | None = None, precision: str | None = "float32") -> str:
    """``"onnx"``, ``"openvino"`` or ``"keras"``: the engine running (or about to run) ``model``."""
    precision = resolve_precision(precision)
    cached = vars(model).get(_ATTR, {}).get(_key(requested_engine(engine), precision))
    return cached.engine if cached is not None else choose_engine(model, engine, precision)


def forget(model: Any) -> None:
    """Drop the cached forward(s) of ``model`` (after changing weights a graph engine baked in)."""
    vars(model).pop(_ATTR, None)
    forget_clones(model)


def _input_dtypes(model: Any) -> list[str]:
    """The dtype each input is cast to on the device (float32 unless the model says else)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed or unbuilt model: one float input
        inputs = []
    return [str(getattr(t, "dtype", None) or "float32") for t in inputs] or ["float32"]


def _keras_forward(model: Any, name: str, precision: str = "float32") -> Forward:
    """Keras on the active backend; on JAX jitted functions, weights passed in at call time,
    batches padded to buckets and top-k selected on the device."""
    import keras

    dtypes = _input_dtypes(model)
    single = len(dtypes) == 1
    # Reduced precision: a mixed clone fed the original's current variables (one mechanism
    # with explain's, `kerascope.mixed_precision`), so it follows a trainer's updates too.
    runner, source = precision_runner(model, precision)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        traces = [0]

        def outputs(trainable, frozen, xs):
            xs = [x.astype(d) for x, d in zip(xs, dtypes, strict=True)]  # uint8 cast on device
            out, _ = runner.stateless_call(
                trainable, frozen, xs[0] if single else xs, training=False
            )
            return [o.astype(jnp.float32) if jnp.issubdtype(o.dtype, jnp.floating) else o
                    for o in keras.tree.flatten(out)]  # fmt: skip

        def traced_outputs(trainable, frozen, xs):
            traces[0] += 1  # runs only while tracing, i.e. once per compilation
            return outputs(trainable, frozen, xs)

        def traced_top_k(trainable, frozen, xs, k):
            traces[0] += 1
            values, indices = jax.lax.top_k(outputs(trainable, frozen, xs)[0], k)
            return [values, indices.astype(jnp.int32)]

        def traced_fit_top_k(trainable, frozen, xs, k, fit):
            traces[0] += 1
            fitted = [fit_on_device(xs[0], fit)]
            values, indices = jax.lax.top_k(outputs(trainable, frozen, fitted)[0], k)
            return [values, indices.astype(jnp.int32)]

        run_outputs = jax.jit(traced_outputs)
        run_top_k = jax.jit(traced_top_k, static_argnums=3)
        run_fit_top_k = jax.jit(traced_fit_top_k, static_argnums=(3, 4))

        def weights() -> tuple[list, list]:
            return ([v.value for v in source.trainable_variables],
                    [v.value for v in source.non_trainable_variables])  # fmt: skip

        def call(xs: list) -> list:
            return run_outputs(*weights(), xs)

        width = _output_width(runner)

        def top_k(xs: list, k: int) -> list:
            k = max(1, min(k, width)) if width else max(1, k)
            return run_top_k(*weights(), xs, k)

        def fit_top_k(xs: list, k: int, fit: DeviceFit) -> list:
            k = max(1, min(k, width)) if width else max(1, k)
            return run_fit_top_k(*weights(), xs, k, fit)

        return Forward(call, "keras", name, precision=precision, top_k=top_k,
                       fit_top_k=fit_top_k if single else None, pads=True,
                       traces=traces)  # fmt: skip

    def call_eager(xs: list) -> list:
        # uint8 crosses to the device as it is (a quarter of float32's bytes) and is cast there;
        # the outputs stay there until `Pending.result`, so a GPU computes while the host goes on
        xs = [keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(x)), d)
              for x, d in zip(xs, dtypes, strict=True)]  # fmt: skip
        given = xs[0] if single else xs
        with _no_grad(backend):
            if runner is source:
                out = runner(given, training=False)
            else:  # the clone computes with the original's current variables, not a copy
                trainable = [v.value for v in source.trainable_variables]
                frozen = [v.value for v in source.non_trainable_variables]
                out, _ = runner.stateless_call(trainable, frozen, given, training=False)
        return keras.tree.flatten(out)

    def to_numpy(o: Any) -> np.ndarray:
        o = keras.ops.convert_to_numpy(o)
        return o if o.dtype == np.int32 else np.asarray(o, np.float32)

    top_k = torch_top_k(call_eager) if backend == "torch" else None
    return Forward(call_eager, "keras", name, precision=precision, top_k=top_k,
                   to_numpy=to_numpy)  # fmt: skip


def _no_grad(backend: str) -> Any:
    """torch.no_grad() on torch (an eager forward records no graph), else nothing."""
    if backend == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _output_width(model: Any) -> int | None:
    """The last dimension of the model's first output (the classes), if known."""
    import keras

    try:
        shape = tuple(keras.tree.flatten(model.outputs)[0].shape)
        return int(shape[-1]) if shape and shape[-1] is not None else None
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


def _onnx_forward(model: Any, name: str) -> Forward:
    """onnxruntime on the converted graph (from the disk cache when it is there)."""
    from kerascope.onnx_export import cache

    session = cache.session(model)
    names = [i.name for i in session.get_inputs()]

    def call(xs: list) -> list:
        feed = {n: np.asarray(x, np.float32) for n, x in zip(names, xs, strict=True)}
        return session.run(None, feed)

    return Forward(call, "onnx", name)


def _openvino_forward(model: Any, name: str, precision: str) -> Forward:
    """OpenVINO on the same converted graph (`kerascope.engines.openvino_runner`)."""
    from kerascope.engines import openvino_runner

    return Forward(openvino_runner(model, precision), "openvino", name, precision=precision)
