"""The one backend-specific file: d(class score) / d(target-layer activations), per backend.

Every backend sees the same graph: ``probe([image, delta]) -> [features, head_input]``, where
``delta`` is a zero tensor added to the target layer's output inside the graph. The gradient
with respect to ``delta`` at zero *is* the gradient with respect to the activations, and works
for any graph (skip connections around the target layer, nested models) without hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kerascope.fast_convs import fast_convs
from kerascope.inference import Pending
from kerascope.mixed_precision import precision_runner

# (features (N,h,w,K), grads (N,h,w,K), class indices (N,), probabilities (N,))
Result = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
GradientFn = Callable[[np.ndarray, np.ndarray], Result]


def gradient_fn(probe, head: Callable) -> GradientFn:
    """Build ``run(pixels_uint8, targets)`` for the active backend; ``targets < 0`` = top-1.

    Args:
        probe: ``keras.Model([image, delta], [features, head_input])``.
        head: ``head(head_input) -> (logits, probabilities)`` written with ``keras.ops``.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax(probe, head)
    if backend == "torch":
        return _torch(probe, head)
    if backend == "tensorflow":
        return _tensorflow(probe, head)
    raise NotImplementedError(f"gradients are not implemented for the {backend!r} backend")


def _jax(probe, head: Callable) -> GradientFn:
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in probe.trainable_variables]
    frozen = [v.value for v in probe.non_trainable_variables]
    shape = tuple(probe.inputs[1].shape[1:])

    traces = [0]

    @jax.jit
    def run(trainable, frozen, pixels, targets):
        traces[0] += 1  # a Python side effect runs once per trace, so this counts compilations
        x = pixels.astype("float32")  # uint8 crosses to the device; the cast is compiled in

        def forward(delta):
            (features, h), _ = probe.stateless_call(trainable, frozen, [x, delta], training=False)
            logits, probs = head(h)
            return logits, (features, probs)

        delta = jnp.zeros((x.shape[0], *shape), x.dtype)
        logits, vjp, (features, probs) = jax.vjp(forward, delta, has_aux=True)
        classes = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
        (grads,) = vjp(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
        return features, grads, classes, jnp.take_along_axis(probs, classes[:, None], 1)[:, 0]

    def call(pixels: np.ndarray, targets: np.ndarray) -> Result:
        # Pad the batch to a power of two so a ragged last batch costs one trace, not one each.
        n = len(pixels)
        size = 1 << max(0, n - 1).bit_length()
        if size != n:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], size - n, 0)])
            targets = np.concatenate([targets, np.repeat(targets[-1:], size - n)])
        with fast_convs():  # traced on a CPU: depthwise gradients ~4x faster (fast_convs)
            out = run(trainable, frozen, pixels, targets.astype(np.int32))
        return tuple(np.asarray(o)[:n] for o in out)

    call.traces = lambda: traces[0]
    return call


def _torch(probe, head: Callable) -> GradientFn:
    import keras
    import torch

    shape = tuple(probe.inputs[1].shape[1:])

    def call(pixels: np.ndarray, targets: np.ndarray) -> Result:
        x = keras.ops.convert_to_tensor(pixels.astype(np.float32))
        delta = torch.zeros((len(pixels), *shape), device=x.device, requires_grad=True)
        features, h = probe([x, delta], training=False)  # training=False: inference BN/dropout
        logits, probs = head(h)
        t = torch.as_tensor(targets, device=x.device, dtype=torch.long)
        classes = torch.where(t < 0, logits.argmax(-1), t)
        score = logits.gather(1, classes[:, None]).sum()  # samples are independent
        (grads,) = torch.autograd.grad(score, delta)
        p = probs.gather(1, classes[:, None])[:, 0]
        return tuple(v.detach().cpu().numpy() for v in (features, grads, classes, p))

    call.traces = lambda: 0
    return call


# --- the whole map on the device ----------------------------------------------------------------

# (maps (N, H, W) float32 in [0, 1] (uint8 levels 0..255 when asked), class indices (N,),
# probabilities (N,))
MapsResult = tuple[np.ndarray, np.ndarray, np.ndarray]
MapsFn = Callable[..., MapsResult]
Combine = Callable[[object, object, object], object]  # (A, g, classes) -> (N, h, w), keras.ops


def fused_fn(probe, head: Callable, combine: Combine, precision: str = "float32") -> MapsFn:
    """``run(pixels_uint8, targets, size=None, pad_to=None, levels=False) -> (maps, classes,
    probs)``: the forward pass, the gradient, the method's channel weighting (``combine``,
    written with ``keras.ops``), the ReLU, the upsampling to ``size`` = (H, W) (None: the feature
    resolution) and the per-map normalisation, all on the device in one call; only the maps,
    classes and probabilities are copied back (with ``levels``, the maps as uint8 heat levels,
    `kerascope.cam.overlay.to_levels`: what pictures draw, a quarter of the bytes).
    ``run.start`` (same arguments) only dispatches the call: a `kerascope.inference.Pending`.

    The batch is padded (repeating its last image) to ``pad_to`` images, or to the next power of
    two, so a job compiles once per batch shape, its last partial batch included. ``precision``
    (a resolved name of `kerascope.precision`) is the compute type of the network's layers;
    the weighting, upsampling and normalisation always run in float32.

    Raises:
        NotImplementedError: a backend without a fused path (TensorFlow): use `gradient_fn`.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_fused(probe, head, combine, precision)
    if backend == "torch":
        return _torch_fused(probe, head, combine, precision)
    raise NotImplementedError(f"no fused heatmap path for the {backend!r} backend")


def padded_size(n: int, pad_to: int | None) -> int:
    """The batch size ``n`` images run at: ``pad_to`` when it holds them, else a power of two."""
    if pad_to is not None and pad_to >= n:
        return int(pad_to)
    return 1 << max(0, n - 1).bit_length()


def _pad(pixels: np.ndarray, targets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(pixels)
    if size == n:
        return pixels, targets
    pixels = np.concatenate([pixels, np.repeat(pixels[-1:], size - n, 0)])
    return pixels, np.concatenate([targets, np.repeat(targets[-1:], size - n)])


# float16 Grad-CAM: the backward pass runs in float16 too, whose smallest normal number is
# 6e-5, so the small gradients of a layer deep in the network flush to 0 (whole maps blank on
# Lite0's early blocks). The class score's gradient is scaled up by LOSS_SCALE before the
# backward pass and the gradient scaled back down in float32, as float16 training scales its
# loss; an image whose scaled gradient overflows is done again at a scale 2^-5 smaller (down
# to 1). bfloat16 has float32's exponent range: nothing to scale.
LOSS_SCALE = 2.0**15
_SCALE_STEP = 2.0**-5


def scaled_vjp(vjp, cotangent, precision: str):
    """``vjp(cotangent)``'s one gradient, in float32; in float16 computed with the per-image
    loss scaling above (``cotangent`` (N, classes): one row per image)."""
    import jax
    import jax.numpy as jnp

    if precision != "float16":
        (grads,) = vjp(cotangent)
        return grads.astype("float32")

    def attempt(scale):
        (g,) = vjp(cotangent * scale[:, None].astype(cotangent.dtype))
        g = g.astype("float32") / scale.reshape(-1, *([1] * (g.ndim - 1)))
        return g, jnp.all(jnp.isfinite(g), axis=tuple(range(1, g.ndim)))

    def again(state):
        i, _, _, ok = state
        return (i < 3) & ~jnp.all(ok)

    def retry(state):
        i, scale, g, ok = state
        scale = jnp.where(ok, scale, scale * _SCALE_STEP)
        g_new, ok_new = attempt(scale)
        g = jnp.where(ok.reshape(-1, *([1] * (g.ndim - 1))), g, g_new)
        return i + 1, scale, g, ok | ok_new

    scale = jnp.full((cotangent.shape[0],), LOSS_SCALE, "float32")
    g, ok = attempt(scale)
    return jax.lax.while_loop(again, retry, (0, scale, g, ok))[2]


def _normalise_maps(ops, maps):
    """ReLU'd maps scaled to peak 1 each; a map with no positive evidence stays 0."""
    peak = ops.max(maps, axis=(1, 2), keepdims=True)
    return ops.where(peak > 0, maps / ops.where(peak > 0, peak, 1.0), 0.0)


def _jax_fused(probe, head: Callable, combine: Combine, precision: str) -> MapsFn:
    import functools

    import jax
    import jax.numpy as jnp
    from keras import ops

    shape = tuple(probe.inputs[1].shape[1:])
    traces = [0]
    # Reduced precision: the probe's mixed clone (`kerascope.mixed_precision`, as inference),
    # fed the probe's own float32 variables.
    runner, source = precision_runner(probe, precision)

    @functools.partial(jax.jit, static_argnames=("size", "levels"))
    def run(trainable, frozen, pixels, targets, size, levels):
        traces[0] += 1  # a Python side effect runs once per trace: this counts compilations
        x = pixels.astype("float32")  # uint8 crosses to the device; the cast is compiled in

        def forward(delta):
            (a, h), _ = runner.stateless_call(trainable, frozen, [x, delta], training=False)
            logits, probs = head(h.astype("float32"))
            return logits, (a, probs)

        delta = jnp.zeros((x.shape[0], *shape), "float32")
        logits, vjp, (a, probs) = jax.vjp(forward, delta, has_aux=True)
        classes = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
        onehot = jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype)
        grads = scaled_vjp(vjp, onehot, precision)
        a = a.astype("float32")
        maps = jnp.maximum(combine(a, grads, classes), 0.0)
        if size is not None and tuple(maps.shape[1:]) != size:
            maps = jax.image.resize(maps, (maps.shape[0], *size), "bilinear")
        prob = jnp.take_along_axis(probs, classes[:, None], 1)[:, 0]
        maps = _normalise_maps(ops, maps)
        if levels:  # `overlay.to_levels` on the device: a quarter of the bytes cross back
            maps = jnp.floor(jnp.clip(maps, 0.0, 1.0) * 255.0 + 0.5).astype(jnp.uint8)
        return maps, classes, prob.astype("float32")

    def start(
        pixels: np.ndarray, targets: np.ndarray, size=None, pad_to=None, levels: bool = False
    ) -> Pending:
        n = len(pixels)
        pixels, targets = _pad(pixels, targets.astype(np.int32), padded_size(n, pad_to))
        trainable = [v.value for v in source.trainable_variables]  # current weights, each call
        frozen = [v.value for v in source.non_trainable_variables]
        size = None if size is None else (int(size[0]), int(size[1]))
        with fast_convs():
            out = run(trainable, frozen, pixels, targets, size, bool(levels))
        return Pending(list(out), n, single=False)

    return _waiting(start, lambda: traces[0])


def _torch_fused(probe, head: Callable, combine: Combine, precision: str) -> MapsFn:
    import keras
    import torch
    import torch.nn.functional as F
    from keras import ops

    shape = tuple(probe.inputs[1].shape[1:])
    reduced = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)

    def start(
        pixels: np.ndarray, targets: np.ndarray, size=None, pad_to=None, levels: bool = False
    ) -> Pending:
        n = len(pixels)
        pixels, targets = _pad(pixels, targets, padded_size(n, pad_to))
        x = keras.ops.convert_to_tensor(pixels).to(torch.float32)  # uint8 crosses, cast there
        delta = torch.zeros((len(x), *shape), device=x.device, requires_grad=True)
        with torch.autocast(x.device.type, dtype=reduced or torch.float32, enabled=bool(reduced)):
            a, h = probe([x, delta], training=False)
            logits, probs = head(h.float())
        t = torch.as_tensor(targets, device=x.device, dtype=torch.long)
        classes = torch.where(t < 0, logits.argmax(-1), t)
        grads = _torch_scaled_grad(logits.gather(1, classes[:, None]).sum(), delta, precision)
        with torch.no_grad():
            maps = torch.clamp(combine(a.detach().float(), grads.float(), classes), min=0.0)
            if size is not None and tuple(maps.shape[1:]) != tuple(size):
                size = (int(size[0]), int(size[1]))
                maps = F.interpolate(maps[:, None], size, mode="bilinear", align_corners=False)
                maps = maps[:, 0]
            maps = _normalise_maps(ops, maps)
            if levels:  # `overlay.to_levels` on the device
                maps = torch.floor(maps.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
            p = probs.gather(1, classes[:, None])[:, 0].float()
        return Pending([maps.detach(), classes, p], n, single=False,
                       to_numpy=lambda v: v.cpu().numpy())  # fmt: skip

    return _waiting(start, lambda: 0)


def _waiting(start: Callable[..., Pending], traces: Callable[[], int]) -> MapsFn:
    """The `fused_fn` call that waits for its results, from ``start``, which only dispatches
    them (kept as ``call.start``: a job dispatches batch i + 1 before it copies batch i back,
    so the device is not idle while the host stacks the next batch)."""

    def call(pixels, targets, size=None, pad_to=None, levels: bool = False) -> MapsResult:
        return tuple(start(pixels, targets, size=size, pad_to=pad_to, levels=levels).result())

    call.start, call.traces = start, traces
    return call


def _torch_scaled_grad(score, delta, precision: str):
    """d score / d delta in float32; in float16 with the loss scaling of `scaled_vjp` (on
    torch per batch: the whole batch again at a smaller scale when any gradient overflows)."""
    import torch

    if precision != "float16":
        (grads,) = torch.autograd.grad(score, delta)
        return grads.float()
    scale = LOSS_SCALE
    while True:
        (grads,) = torch.autograd.grad(score * scale, delta, retain_graph=scale > 1)
        grads = grads.float() / scale
        if scale <= 1 or bool(torch.isfinite(grads).all()):
            return grads
        scale = max(1.0, scale * _SCALE_STEP)


def _tensorflow(probe, head: Callable) -> GradientFn:
    import tensorflow as tf

    shape = tuple(probe.inputs[1].shape[1:])

    @tf.function(reduce_retracing=True)
    def run(pixels, targets):
        x = tf.cast(pixels, tf.float32)
        delta = tf.zeros((tf.shape(x)[0], *shape), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(delta)
            features, h = probe([x, delta], training=False)
            logits, probs = head(h)
            classes = tf.where(targets < 0, tf.argmax(logits, -1, tf.int32), targets)
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        grads = tape.gradient(score, delta)
        return features, grads, classes, tf.gather(probs, classes, axis=1, batch_dims=1)

    def call(pixels: np.ndarray, targets: np.ndarray) -> Result:
        return tuple(np.asarray(o) for o in run(pixels, targets.astype(np.int32)))

    call.traces = lambda: 0
    return call
