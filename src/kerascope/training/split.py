"""Split training: the frozen prefix of a network runs on the inference engine, only the
trainable suffix trains in Keras.

Why: on a CPU the frozen part of a transfer, fine-tuning or features model is 80-100 % of every
training step's forward cost, and onnxruntime runs it ~20x faster than Keras (DESIGN.md); and
without augmentation it need not run more than once per stage, on any device. A stage's
network is cut where trainable layers begin (:func:`split_model`): the *prefix* (augmented
pixels in, the tensors that cross the cut out) is compiled once per stage by
:func:`kerascope.inference.compiled`; the *suffix* (those tensors in, probabilities out) is a
Keras model built from the very same layer objects, so training it updates the full model's
weights and ``model.keras`` is saved from the full model as before. The cut is exact: with the
same batch, one step on the suffix gives the same weights as one step on the whole graph.

Augmentation stays real: the same random transformations run on the uint8 batch before the
prefix (``kerascope.data.affine``: Pillow, since XLA's CPU resampling is slower than the whole
network), seeded from ``(seed, epoch, batch)`` so every epoch sees new views and a resumed run
sees the same ones. Without augmentation (validation data, ``augment=False``) the prefix runs once
per stage and its outputs are reused every epoch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.loader import DerivedSequence, FolderSequence  # noqa: E402
from kerascope.data.regularise import (  # noqa: E402
    RegulariseConfig,
    regularise_batch,
    sample_mix,
    soft_targets,
)
from kerascope.training.padded import PaddedLoss, row_weights, sample_weights  # noqa: E402

# Prefix outputs above this size are kept in a memory-mapped file, not in RAM.
IN_MEMORY_BYTES = 1 << 30
# The frozen prefix computes in float32 whatever --precision says; the suffix follows it, and
# the stage's line says so. Measured on the 2-core AMD EPYC (no bf16 units): Lite0's prefix,
# 64 photos at 224 px, 1.6-2.0 s on onnxruntime in float32 against 10.7-17.8 s in bfloat16 (the
# keras engine's mixed clone: no CPU engine computes bf16 there); float32 is also exact.
PREFIX_PRECISION = "float32"


@dataclass
class SplitModel:
    """A stage's network cut at its freeze boundary.

    Attributes:
        prefix: frozen part, augmented pixels (0..255) in, boundary tensors out.
        suffix: trainable part, boundary tensors in, probabilities out; shares its layers
            (and so its variables) with the full model.
        cut: name of the first backbone layer in the suffix (None: the head only).
        cut_index: its index as `kerascope models layers` numbers it (None: no cut).
        cut_kind: its class name, which tells a name Keras made up (``conv2d_174``).
    """

    prefix: Any
    suffix: Any
    cut: str | None
    cut_index: int | None = None
    cut_kind: str | None = None


class Suffix(PaddedLoss, keras.Model):
    """A split stage's trainable part: a functional model of the network's own layers, trained
    on padded batches (its ``loss`` the mean over real rows: `kerascope.training.padded`)."""


def _first_trainable(layers: list) -> int | None:
    """Index of the first layer with trainable weights, None when every layer is frozen."""
    for i, layer in enumerate(layers):
        if layer.trainable_weights:
            return i
    return None


def _graph_nodes(model: Any) -> list:
    """The call nodes of ``model``'s own graph (not of other graphs sharing its layers), inputs
    first: a layer's inputs are always made by an earlier node."""
    return [node for depth in sorted(model._nodes_by_depth, reverse=True)
            for node in model._nodes_by_depth[depth] if not node.is_input]  # fmt: skip


def _boundary(backbone: Any, start: int) -> list:
    """Tensors made by ``backbone.layers[:start]`` and read by ``backbone.layers[start:]``."""
    before = {id(layer) for layer in backbone.layers[:start]}
    tensors: list = []
    for node in _graph_nodes(backbone):
        if id(node.operation) in before:
            continue
        for tensor in node.input_tensors:
            made_by = tensor._keras_history.operation
            if id(made_by) in before and not any(tensor is t for t in tensors):
                tensors.append(tensor)
    return tensors


def _leaves(layer: Any) -> list:
    nested = getattr(layer, "layers", None)
    return [leaf for inner in nested for leaf in _leaves(inner)] if nested else [layer]


def _deterministic(layer: Any) -> bool:
    """Whether ``layer`` computes the same in training as at inference: no random layer
    (Dropout with a rate, noise) and no BatchNorm on batch statistics inside."""
    for leaf in _leaves(layer):
        # A frozen backbone's Dropout keeps its seed generator with its rate set to 0.
        if getattr(leaf, "seed_generator", None) is not None and getattr(leaf, "rate", 1):
            return False
        if isinstance(leaf, keras.layers.BatchNormalization) and leaf.trainable:
            return False
    return True


def _cut_inside(layer: Any) -> int | None:
    """Where a partially trainable nested model starts training (its first trainable layer),
    None when it is not such a model or when (nearly) all of it trains."""
    if not isinstance(layer, keras.Model) or not hasattr(layer, "_nodes_by_depth"):
        return None
    start = _first_trainable(layer.layers)
    return start if start is not None and start > 1 else None


def split_model(model: Any) -> SplitModel | None:
    """Cut a model where its trainable layers begin, or None when no frozen weights come first.

    One rule for every backbone recipe. The outer graph is walked from its input (or from the
    output of its ``augmentation`` layer, which the split trainer applies to the uint8 batch
    itself): a layer joins the *prefix* when all its inputs come from the prefix, it has no
    trainable weights and it computes the same in training as at inference (so a frozen
    backbone, the pooling after it, the in-graph resizes and the concatenation of the
    ``features`` ensemble join; Dropout does not). A nested model that trains only from some
    layer on (fine-tuning) is cut inside, at that layer. The tensors the prefix hands to the
    rest are the boundary: the prefix outputs them, the *suffix* takes them as inputs and runs
    the rest of the graph on the very same layer objects. Layers past the cut that are frozen
    (BatchNorm in fine-tuning) stay in the suffix, in inference mode, as in the whole graph.
    """
    nodes = _graph_nodes(model)
    augment = [n for n in nodes if n.operation.name == "augmentation"]
    source = augment[0].output_tensors[0] if augment else model.inputs[0]
    if augment:
        nodes.remove(augment[0])
    ready = {id(source)}  # tensors the prefix computes
    prefix_nodes, cuts, rest = [], [], []
    for node in nodes:
        layer = node.operation
        inside = all(id(t) in ready for t in node.input_tensors)
        if inside and not layer.trainable_weights and _deterministic(layer):
            prefix_nodes.append(node)
            ready.update(id(t) for t in node.output_tensors)
        elif inside and _cut_inside(layer) is not None and len(node.output_tensors) == 1:
            cuts.append((node, _cut_inside(layer)))
            rest.append(node)
        else:
            rest.append(node)
    if not any(node.operation.weights for node in prefix_nodes) and not cuts:
        return None  # nothing frozen to run ahead of time
    if id(model.outputs[0]) in ready:
        return None  # nothing trains
    boundary: list = []
    for node in rest:
        if any(node is c for c, _ in cuts):
            continue
        for t in node.input_tensors:
            if id(t) in ready and not any(t is b for b in boundary):
                boundary.append(t)

    # The prefix: the same layers replayed on a fresh input, plus each cut model's bottom.
    image = keras.Input(shape=source.shape[1:], dtype=source.dtype, name="image")
    values = _replay(prefix_nodes, {id(source): image})
    outputs = [values[id(t)] for t in boundary]
    suffix_inputs = [keras.Input(shape=t.shape[1:], name=f"boundary_{i}")
                     for i, t in enumerate(boundary)]  # fmt: skip
    known = {id(t): x for t, x in zip(boundary, suffix_inputs, strict=True)}
    tops = {}
    for node, start in cuts:
        inner = node.operation
        tensors = _boundary(inner, start)
        bottom = keras.Model(inner.input, tensors, name=f"{inner.name}_prefix")
        args, kwargs = node.arguments.fill_in(values)
        got = bottom(*args, **kwargs)
        outputs += list(got) if isinstance(got, list | tuple) else [got]
        cut_inputs = [keras.Input(shape=t.shape[1:], name=f"boundary_{len(suffix_inputs) + i}")
                      for i, t in enumerate(tensors)]  # fmt: skip
        suffix_inputs += cut_inputs
        top = keras.Model(tensors, inner.output, name=f"{inner.name}_top")
        tops[id(node)] = (top, cut_inputs)
    prefix = keras.Model(image, _pack(outputs), name=f"{model.name}_prefix")

    def call(node: Any, values: dict) -> Any:
        if id(node) in tops:
            top, cut_inputs = tops[id(node)]
            return top(_pack(cut_inputs))
        return _call(node, values)

    values = _replay(rest, known, call)
    suffix = Suffix(_pack(suffix_inputs), values[id(model.outputs[0])],
                    name=f"{model.name}_suffix")  # fmt: skip
    if not cuts:
        return SplitModel(prefix, suffix, None)
    from kerascope.training.heads import keras_index

    inner, start = cuts[0][0].operation, cuts[0][1]
    layer = inner.layers[start]
    return SplitModel(prefix, suffix, layer.name, keras_index(inner, start),
                      type(layer).__name__)  # fmt: skip


def _call(node: Any, values: dict) -> Any:
    args, kwargs = node.arguments.fill_in(values)
    return node.operation(*args, **kwargs)


def _replay(nodes: list, values: dict, call: Callable = _call) -> dict:
    """Call each node's layer again on the tensors in ``values`` (keyed by the id of the
    original tensor), in order; returns ``values`` with every node's outputs added."""
    for node in nodes:
        out = call(node, values)
        flat = list(out) if isinstance(out, list | tuple) else [out]
        for original, new in zip(node.output_tensors, flat, strict=True):
            values[id(original)] = new
    return values


class PrefixSequence(DerivedSequence):
    """``(boundary tensors, labels, sample weights)`` batches: a :class:`FolderSequence`'s
    uint8 images, augmented, through the compiled prefix; every batch full-size (the last one
    padded with weight-0 rows) and ``class_weight`` folded into the weights.

    Without ``augment`` every image's prefix outputs are computed once (:meth:`precompute`)
    and batches are gathered from them in the wrapped sequence's order, epoch after epoch.
    """

    def __init__(
        self,
        images: FolderSequence,
        forward: Callable[[np.ndarray], Any],
        augment: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
        scratch: str | os.PathLike | None = None,
        progress: Callable[[int, int], None] | None = None,
        class_weight: dict[int, float] | None = None,
        regularise: RegulariseConfig | None = None,
        seed: int = 0,
    ):
        # Two threads: one batch's augmentation (Pillow, GIL released) overlaps the other's
        # prefix (onnxruntime): measured 2x the img/s of one thread for transfer on 2 cores.
        # Batches gathered from precomputed outputs need none.
        cached = augment is None and not (regularise is not None and regularise.mixes)
        super().__init__(threads=0 if cached else 2, ahead=4)
        self.images, self.forward, self.augment = images, forward, augment
        self.scratch = Path(scratch) if scratch else None
        self.row_weight = row_weights(images, class_weight)
        # Soft targets (an inactive config: one-hot, for validation); mixup and CutMix mix
        # pixels, so the prefix then runs per batch like augmentation does.
        self.regularise, self.seed = regularise, int(seed)
        self.outputs: list[np.ndarray] | None = None
        if cached:
            self.precompute(progress)

    def make_batch(self, index: int) -> tuple[Any, np.ndarray, np.ndarray]:
        # Full-size batches (the last one padded, weight 0): the suffix's step compiles once.
        rows, real = self.images.padded_rows(index)
        labels = self.images.labels[rows]
        weights = sample_weights(labels, real, self.row_weight)
        r, classes = self.regularise, len(self.images.classes)
        if self.outputs is not None:
            if r is not None:
                labels = soft_targets(labels, classes, smoothing=r.label_smoothing)
            self._complete(rows[self.images.fed_part(len(rows))])
            return _pack([out[rows] for out in self.outputs]), labels, weights
        part = self.images.fed_part(len(rows))
        pixels = self._load(rows, part, index, real)  # other processes' rows: zeros
        if self.augment is not None:
            pixels = self.augment(pixels, self.epoch, index)
        if r is not None:
            pixels, labels = regularise_batch(r, self.seed, self.epoch, index, pixels, labels,
                                              classes, real)  # fmt: skip
        if part == slice(None):
            return _pack(_as_list(self.forward(pixels))), labels, weights
        # Several processes: the prefix runs on this process's rows only (the others' stay
        # zero; devices.ProcessShard feeds this part alone).
        mine = _as_list(self.forward(pixels[part]))
        outs = [np.zeros((len(rows), *o.shape[1:]), o.dtype) for o in mine]
        for out, o in zip(outs, mine, strict=True):
            out[part] = o
        return _pack(outs), labels, weights

    def _load(self, rows: np.ndarray, part: slice, index: int, real: int) -> np.ndarray:
        """The batch's pixels this process needs: its part of the rows, and with mixup or
        CutMix their partners too (perhaps another process's rows: mixing with zeros instead
        would train on black halves). The rest stay zero."""
        r = self.regularise
        if part == slice(None) or r is None or not r.mixes:
            return self.images.load_rows(rows, part)
        height, width = self.images.image_size
        plan = sample_mix(r, self.seed, self.epoch, index, len(rows), height, width, real)
        mine = np.arange(len(rows))[part]
        need = np.union1d(mine, plan.partner[mine])
        pixels = np.zeros((len(rows), height, width, 3), self.images.dtype)
        pixels[need] = self.images.load_rows(rows[need])
        return pixels

    def precompute(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Run every image through the prefix once, in file order. In a multi-process run
        (the images' ``share``) only the rows this process feeds in the current epoch: a later
        epoch's new rows are computed when a batch first needs them (:meth:`_complete`), as
        the decode cache decodes them; a validation split's rows never change."""
        n = len(self.images.paths)
        size = self.images.batch_size
        fed = self.images.fed_rows()
        self._computed = np.zeros(n, bool)
        outputs: list[np.ndarray] | None = None
        total = -(-len(fed) // size)
        for done, begin in enumerate(range(0, len(fed), size), 1):
            rows = fed[begin : begin + size]
            values = _as_list(self.forward(self.images.load_rows(rows)))
            if outputs is None:
                outputs = [self._allocate((n, *v.shape[1:]), v.dtype) for v in values]
            for out, v in zip(outputs, values, strict=True):
                out[rows] = v
            self._computed[rows] = True
            if progress:
                progress(done, total)
        self.outputs = outputs

    def _complete(self, rows: np.ndarray) -> None:
        """Compute the prefix outputs of those of ``rows`` not computed yet (a process's rows
        that an earlier epoch did not feed it)."""
        missing = np.unique(rows[~self._computed[rows]])
        size = self.images.batch_size
        for begin in range(0, len(missing), size):
            chunk = missing[begin : begin + size]
            values = _as_list(self.forward(self.images.load_rows(chunk)))
            for out, v in zip(self.outputs, values, strict=True):
                out[chunk] = v
            self._computed[chunk] = True

    def _allocate(self, shape: tuple, dtype: Any) -> np.ndarray:
        """An array in RAM, or memory-mapped in ``scratch`` when it would be large."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes <= IN_MEMORY_BYTES or self.scratch is None:
            return np.zeros(shape, dtype)  # rows another process feeds stay 0
        from kerascope.data.loader import reserve_blocks
        from kerascope.files import output_error

        self.scratch.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=self.scratch, suffix=".npy", delete=False)
        handle.close()
        try:
            array = np.lib.format.open_memmap(handle.name, mode="w+", dtype=dtype, shape=shape)
            reserve_blocks(handle.name)  # a full disk fails here, not as a SIGBUS later
        except OSError as exc:
            raise output_error(self.scratch, exc) from exc
        finally:
            os.unlink(handle.name)  # the mapping keeps the data; nothing is left behind
        return array


def _as_list(value: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in value] if isinstance(value, list | tuple) else [value]


def _pack(values: list[np.ndarray]) -> Any:
    return values[0] if len(values) == 1 else tuple(values)


class ShardedPrefix:
    """A frozen prefix on the JAX engine run on each of this process's devices for its shard
    of every batch: the batch is placed split along its first axis over a mesh of the local
    devices (``NamedSharding(mesh, P("batch"))``), the prefix's weights replicated on each,
    and the compiled forward keeps the split, so every device computes the prefix for its
    rows only and its outputs stay on that device until they are copied back.

    Why its own weights: in a multi-process run the model's variables are global arrays over
    every process's devices, and a batch this process alone feeds must meet weights on its
    devices only. The prefix is frozen (no trainable weights, deterministic layers: see
    :func:`split_model`), so a copy taken when the stage starts stays right all stage."""

    engine = "keras"

    def __init__(self, model: Any, devices: list[Any]):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = list(devices)
        mesh = Mesh(np.array(self.devices), ("batch",))
        self.rows_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        replicated = NamedSharding(mesh, PartitionSpec())

        def local(variable: Any) -> Any:
            value = variable.value
            if not getattr(value, "is_fully_addressable", True):  # another process's too
                value = value.addressable_data(0)
            return jax.device_put(value, replicated)

        self._trainable = [local(v) for v in model.trainable_variables]
        self._frozen = [local(v) for v in model.non_trainable_variables]
        dtypes = [str(t.dtype or "float32") for t in model.inputs]
        single = len(dtypes) == 1

        def outputs(trainable: list, frozen: list, xs: list) -> list:
            xs = [x.astype(d) for x, d in zip(xs, dtypes, strict=True)]  # uint8 cast on device
            out, _ = model.stateless_call(trainable, frozen, xs[0] if single else xs,
                                          training=False)  # fmt: skip
            return [o.astype("float32") for o in keras.tree.flatten(out)]

        self._run = jax.jit(outputs)

    def on_devices(self, x: Any) -> list[Any]:
        """The prefix's outputs for batch ``x`` (rows a multiple of the device count), as
        arrays split over the devices like the batch (not copied back)."""
        import jax

        xs = list(x) if isinstance(x, list | tuple) else [x]
        xs = [jax.device_put(np.asarray(a), self.rows_sharding) for a in xs]
        return self._run(self._trainable, self._frozen, xs)

    def __call__(self, x: Any) -> Any:
        """Like a :class:`kerascope.inference.Forward`: float32 NumPy output(s). A batch whose
        rows do not split evenly (the last of a precomputed pass) is padded with zero rows,
        which are dropped again."""
        xs = list(x) if isinstance(x, list | tuple) else [x]
        n, k = len(xs[0]), len(self.devices)
        rows = -(-n // k) * k
        if rows != n:
            xs = [np.concatenate([a, np.zeros((rows - n, *a.shape[1:]), a.dtype)]) for a in xs]
        outs = [np.asarray(o)[:n] for o in self.on_devices(xs)]
        return outs[0] if len(outs) == 1 else outs


def local_mesh_devices() -> list[Any]:
    """This process's devices in the current Keras distribution's mesh (none without one)."""
    distribution = keras.distribution.distribution()
    if distribution is None or keras.backend.backend() != "jax":
        return []
    import jax

    return [d for d in np.asarray(distribution.device_mesh.devices).flat
            if d.process_index == jax.process_index()]  # fmt: skip


def prefix_engine(engine: str | None) -> str | None:
    """The engine the frozen prefix is asked to run on: ``engine`` (``--engine``) when it names
    one (onnx, openvino), else None (auto or ``KERASCOPE_ENGINE`` decide)."""
    from kerascope.inference import requested_engine

    asked = requested_engine(engine)
    return asked if asked in ("onnx", "openvino") else None


def prefix_forward(prefix: Any, engine: str | None = None) -> Callable[[Any], Any]:
    """The stage's compiled prefix: on the JAX engine with several of this process's devices
    in the run's mesh, a :class:`ShardedPrefix` (each device for its shard of every batch);
    else the engine's one forward over the whole batch (see :func:`prefix_place`)."""
    from kerascope.inference import compiled

    forward = compiled(prefix, engine, PREFIX_PRECISION)
    devices = local_mesh_devices()
    if len(devices) < 2 or forward.engine != "keras" or keras.backend.backend() != "jax":
        return forward
    return ShardedPrefix(prefix, devices)


def prefix_place(prefix: Any, engine: str | None = None) -> str:
    """Where the stage's prefix runs, for the stage's line. onnxruntime and OpenVINO run one
    forward over the whole batch: they run on this machine's CPU with their own threads, where
    the mesh's devices (virtual CPU devices at most) are those same cores, so per-device
    placement does not apply to them."""
    from kerascope.inference import engine_name

    name = engine_name(prefix, engine)
    devices = local_mesh_devices()
    if len(devices) < 2:
        return f"frozen prefix on {name}"
    if name != "keras" or keras.backend.backend() != "jax":
        return (f"frozen prefix on {name} over each whole batch (a CPU engine on its own "
                f"threads: per-device does not apply; the {len(devices)} devices train the "
                "suffix)")  # fmt: skip
    return f"frozen prefix on keras, on each of {len(devices)} devices for its shard"
