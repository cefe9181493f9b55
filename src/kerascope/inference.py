"""The one inference core: ``compiled(model)`` runs any Keras (sub)model on the best engine.

Every inference forward pass in kerascope goes through here: a full classifier (``classify``,
``video``), a feature body (``features``), a CAM probe cut at the target layer, a frozen
backbone prefix in the split trainer. Two engines, chosen by measurement
(benchmarks/classify_cpu.py):

- ``onnx``: the Keras graph converted to ONNX (``kerascope.onnx_export``) and run by
  onnxruntime; on a CPU this was ~19x faster than Keras-JAX for EfficientNet-Lite0. The
  converted graph is cached on disk (``kerascope.onnx_export.cache``), so a new process skips
  the conversion. Weights are baked into the graph: the forward is a **snapshot** of the weights
  at ``compiled()`` time; call :func:`forget` after changing them.
- ``keras``: the Keras model itself, jit-compiled on JAX with the uint8 -> float cast inside
  the jitted function (so batches cross to the device as uint8). It reads the model's
  **current** variable values on every call, so it stays right while a trainer updates them.
  Used on GPUs, for models the converter does not cover, and when asked for.

``KERASCOPE_ENGINE`` (auto|keras|onnx) overrides the choice; auto picks onnx on a CPU when
:func:`kerascope.onnx_export.supports` the model, keras otherwise.

It is also the one way images reach a model: :func:`normalise_inputs` turns paths, folders,
globs, RGB arrays and PIL Images into sources in input order (a missing path stays at its
place as a :class:`Missing`), and :func:`iter_batches` decodes them on a thread pool into
batches of :class:`Item` in that same order, missing and unreadable inputs as error items in
place. classify, explain, evaluate, predict and features all go through both; video frames,
which are not files, have their own pipeline (``kerascope.video``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kerascope.errors import KerascopeError
from kerascope.images import (
    ImageError,
    as_rgb_array,
    expand_inputs,
    fit,
    fit_box,
    load_image,
    to_rgb,
)

ENGINES = ("auto", "keras", "onnx")
ENV_VAR = "KERASCOPE_ENGINE"
_ATTR = "_kerascope_forwards"  # per-model cache, on the model: freed with it (no global leak)

Batch = np.ndarray | Sequence[np.ndarray]
Output = np.ndarray | list[np.ndarray]


class EngineError(KerascopeError, ValueError):
    """An engine name that is not auto, keras or onnx."""


class Forward:
    """A compiled forward pass: ``fwd(x)`` -> one array, or a list for a multi-output model.

    Attributes:
        engine: ``"onnx"`` or ``"keras"``.
        name: the model's name, for messages and reports.
        snapshot: True when the weights were copied in at compile time (onnx): changing the
            model's weights afterwards needs :func:`forget` and a new :func:`compiled`.
    """

    def __init__(self, run: Callable[[list[np.ndarray]], list], engine: str, name: str):
        self._run = run
        self.engine = engine
        self.name = name
        self.snapshot = engine == "onnx"

    def __call__(self, x: Batch) -> Output:
        """Run a batch: (N, ...) uint8 or float; a list of arrays for a multi-input model.

        Returns:
            float32 outputs in the Keras layout: one array for a single-output model, else a
            list in ``model.outputs`` order.
        """
        xs = list(x) if isinstance(x, list | tuple) else [x]
        outs = [np.asarray(o) for o in self._run(xs)]
        return outs[0] if len(outs) == 1 else outs

    def __repr__(self) -> str:
        return f"<Forward {self.name!r} on {self.engine}>"


def on_cpu() -> bool:
    """Whether the Keras backend computes on the CPU (no GPU or TPU visible to it)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    return True


def requested_engine(engine: str | None = None) -> str:
    """The engine asked for: ``engine``, else ``KERASCOPE_ENGINE``, else ``"auto"`` (checked)."""
    wanted = (engine or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if wanted not in ENGINES:
        source = "engine" if engine else ENV_VAR
        raise EngineError(f"{source}={wanted!r} is not an engine; use one of {', '.join(ENGINES)}")
    return wanted


def choose_engine(model: Any, engine: str | None = None) -> str:
    """The engine ``compiled(model)`` would use: ``engine``, else ``KERASCOPE_ENGINE``, else auto.

    Auto is onnx on a CPU when onnxruntime is installed and the converter supports every layer
    (a cheap walk over the graph, nothing is converted), keras otherwise.
    """
    wanted = requested_engine(engine)
    if wanted != "auto":
        return wanted
    if not on_cpu():
        return "keras"
    try:
        import onnxruntime  # noqa: F401

        from kerascope.onnx_export import supports
    except ImportError:
        return "keras"
    return "onnx" if supports(model) else "keras"


def _cache(model: Any) -> dict[str, Forward]:
    cache = vars(model).get(_ATTR)
    if cache is None:
        cache = {}
        # object.__setattr__: past Keras's attribute tracking and torch.nn.Module's hooks.
        object.__setattr__(model, _ATTR, cache)
    return cache


def compiled(model: Any, engine: str | None = None) -> Forward:
    """The forward pass of ``model`` on the best engine, built once per model object.

    Works for any functional (sub)model: a full classifier, a backbone prefix cut at an
    intermediate layer, a model with several outputs, a model whose inputs are intermediate
    tensors of another.

    Args:
        model: a Keras 3 model with one or more inputs (RGB 0..255 images for zoo models).
        engine: ``"auto"``, ``"keras"`` or ``"onnx"``; default ``KERASCOPE_ENGINE`` or auto.

    Returns:
        A :class:`Forward`: ``fwd(x)`` takes uint8 or float batches and returns float32 numpy
        output(s); ``fwd.engine`` says which engine runs it. The onnx engine snapshots the
        weights (see :func:`forget`); the keras engine reads the current ones on each call.

    Example:
        >>> fwd = compiled(keras.Model(backbone.input, backbone.get_layer("block_3").output))
        >>> fwd(np.zeros((8, 224, 224, 3), np.uint8)).shape, fwd.engine  # doctest: +SKIP
        ((8, 28, 28, 40), 'onnx')
    """
    cache = _cache(model)
    wanted = requested_engine(engine)
    if wanted not in cache:
        kind = choose_engine(model, wanted)
        if kind not in cache:
            build = _onnx_forward if kind == "onnx" else _keras_forward
            cache[kind] = Forward(build(model), kind, getattr(model, "name", "model"))
        cache[wanted] = cache[kind]
    return cache[wanted]


def engine_name(model: Any, engine: str | None = None) -> str:
    """``"onnx"`` or ``"keras"``: the engine running (or about to run) ``model``, for reports."""
    cached = vars(model).get(_ATTR, {}).get(requested_engine(engine))
    return cached.engine if cached is not None else choose_engine(model, engine)


def forget(model: Any) -> None:
    """Drop the cached forward(s) of ``model`` (after changing weights an onnx forward baked in)."""
    vars(model).pop(_ATTR, None)


def _input_dtypes(model: Any) -> list[str]:
    """The dtype each input is cast to on the device (float32 unless the model says else)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed or unbuilt model: one float input
        inputs = []
    return [str(getattr(t, "dtype", None) or "float32") for t in inputs] or ["float32"]


def _keras_forward(model: Any) -> Callable[[list[np.ndarray]], list]:
    """Keras on the active backend; on JAX one jitted function, weights passed in at call time."""
    import keras

    dtypes = _input_dtypes(model)
    single = len(dtypes) == 1
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def run(trainable, frozen, xs):
            xs = [x.astype(d) for x, d in zip(xs, dtypes, strict=True)]  # uint8 cast on device
            out, _ = model.stateless_call(
                trainable, frozen, xs[0] if single else xs, training=False
            )
            return keras.tree.flatten(out)

        def call(xs: list[np.ndarray]) -> list:
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            return run(trainable, frozen, xs)

        return call

    def call_eager(xs: list[np.ndarray]) -> list:
        xs = [np.asarray(x).astype(d) for x, d in zip(xs, dtypes, strict=True)]
        if backend == "torch":
            import torch

            with torch.no_grad():
                out = model(xs[0] if single else xs, training=False)
        else:
            out = model.predict_on_batch(xs[0] if single else xs)
        return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(out)]

    return call_eager


def _onnx_forward(model: Any) -> Callable[[list[np.ndarray]], list]:
    """onnxruntime on the converted graph (from the disk cache when it is there)."""
    from kerascope.onnx_export import cache

    session = cache.session(model)
    names = [i.name for i in session.get_inputs()]

    def call(xs: list[np.ndarray]) -> list:
        feed = {n: np.asarray(x, np.float32) for n, x in zip(names, xs, strict=True)}
        return session.run(None, feed)

    return call


# The reason given for an input that names nothing on disk (a path, folder or glob).
MISSING_INPUT = "no such file, folder or matching glob"

Source = str | os.PathLike | np.ndarray | Image.Image
"""One input: a path (file, folder or glob), an RGB array or a PIL Image."""


class Missing(str):
    """An input path that names nothing on disk, kept at its place among the sources."""


@dataclass
class Item:
    """A decoded input ready for a model, or the error met while decoding it."""

    source: str
    pixels: np.ndarray | None = None  # (H, W, 3) uint8 at the model's input size
    original: np.ndarray | None = None  # full-resolution RGB, kept when asked for
    error: str | None = None
    box: tuple[float, float, float, float] | None = None  # the part `pixels` shows (fit_box)
    shape: tuple[int, int] | None = None  # (height, width) of the decoded picture


def source_name(source) -> str:
    """How a source is named in results: its path, else ``<array>`` or ``<image>``."""
    if isinstance(source, str | os.PathLike):
        return str(os.fspath(source))
    return "<image>" if isinstance(source, Image.Image) else "<array>"


def load_source(source, size: tuple[int, int] | None = None) -> np.ndarray:
    """One source as (H, W, 3) uint8 RGB: at full resolution, or, when only a ``size`` input
    is needed, a large file decoded at reduced size (at least twice ``size``; see
    `kerascope.images.load_image`).

    Raises:
        ImageError: an unreadable file. ValueError: an array or image that is not a picture.
    """
    if isinstance(source, str | os.PathLike):
        return load_image(source, min_size=size)
    if isinstance(source, Image.Image):
        return as_rgb_array(np.asarray(to_rgb(source)))  # what a file of it would give
    return as_rgb_array(source)


def decode_item(
    source, size: tuple[int, int], keep_original: bool = False, convention: Any = None
) -> Item:
    """Decode one source and fit it to ``size`` under ``convention`` (`kerascope.images.fit`;
    ``None``: squash); a failure comes back as ``Item.error``."""
    name = source_name(source)
    if isinstance(source, Missing):
        return Item(name, error=MISSING_INPUT)
    try:
        image = load_source(source, None if keep_original else size)
    except ImageError as exc:
        return Item(name, error=exc.reason)
    except (ValueError, OSError) as exc:
        return Item(name, error=str(exc))
    box = fit_box(image.shape, size, convention)
    kept = image if keep_original else None
    return Item(name, fit(image, size, convention), kept, box=box, shape=image.shape[:2])


def normalise_inputs(inputs) -> tuple[list, list[str], list[str]]:
    """Inputs as sources in input order; also the skipped (non-image) and missing paths.

    ``inputs`` is one source or an iterable of them: paths (files, folders walked
    recursively, globs), (H, W, 3) arrays, PIL Images, or an (N, H, W, 3) array. Paths and
    in-memory images are not mixed in one call. Folders and globs expand in place; a missing
    path stays at its position as a :class:`Missing` (and is listed in the third value too).
    """
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs), [], []
    if isinstance(inputs, str | os.PathLike | np.ndarray | Image.Image):
        inputs = [inputs]
    inputs = list(inputs)
    images = [x for x in inputs if isinstance(x, np.ndarray | Image.Image)]
    paths = [x for x in inputs if not isinstance(x, np.ndarray | Image.Image)]
    if images and paths:
        raise ValueError("pass either paths or in-memory images (arrays, PIL), not both")
    if images:
        return images, [], []
    found = expand_inputs(paths)
    sources = [Missing(name) if missing else name for name, missing in found.ordered]
    return sources, list(found.skipped), list(found.missing)


def iter_batches(
    inputs: Sequence,
    size: tuple[int, int],
    batch_size: int,
    keep_original: bool = False,
    convention: Any = None,
) -> Iterator[list[Item]]:
    """Batches of decoded `Item`s in input order; missing and unreadable ones as error items.

    ``inputs`` are sources as :func:`normalise_inputs` returns them. Decoding runs in a thread
    pool, one batch ahead of the consumer (Pillow releases the GIL).

    ``convention`` (a `kerascope.zoo.registry.InputConvention`) says how pictures are fitted to
    ``size``: classification passes its classifier's (``Classifier.convention``: a centre crop
    for zoo weights measured that way). The default, squash, keeps the whole picture: explain
    and video use it so a heatmap covers everything the user sees, and features and training
    use it because trained models learnt on squashed pictures.
    """
    workers = min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        pending = None
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            future = [pool.submit(decode_item, s, size, keep_original, convention) for s in chunk]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = future
        if pending is not None:
            yield [f.result() for f in pending]
