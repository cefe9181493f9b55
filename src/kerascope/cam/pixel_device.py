"""Pixel-level attributions on the device: the gradient of the class logit with respect to the
input pixels (0..255, before the model's own preprocessing), per backend.

One compiled call per batch (JAX: one ``jax.jit``; torch: the backend's autograd) runs the
forward pass, every gradient the method needs (SmoothGrad's noisy copies and Integrated
Gradients' path points are looped on the device, one batch at a time, so memory stays that of
one batch), the reduction to (H, W) and the normalisation; only maps, classes and probabilities
are copied back.

Guided Backpropagation runs on a copy of the graph (`guided_model`) that shares every layer and
weight, with a gradient clamp after each ReLU: forward the identity, backward ``max(g, 0)``.
Behind a ReLU's own backward ``1[z > 0] g`` that gives Springenberg et al.'s rule
``1[z > 0] 1[g > 0] g`` (ReLU6: ``1[0 < z < 6]``), whether the ReLU is a layer of its own or
the activation of a Conv2D/Dense. Nothing of the user's model is changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kerascope.cam.gradients import _pad, _torch_scaled_grad, padded_size, scaled_vjp
from kerascope.fast_convs import fast_convs
from kerascope.mixed_precision import precision_runner

# (maps (N, H, W) float32 in [0, 1], class indices (N,), probabilities (N,)); with raw=True
# (attributions (N, H, W, 3) float32, class indices (N,), class logits (N,))
PixelResult = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PixelSpec:
    """What one pixel method computes (hashable: it keys the compiled function)."""

    kind: str  # gradient | smooth | integrated | guided | guidedcam
    reduce: str = "maxabs"  # maxabs: max_c |a|; positive: ReLU(sum_c a)
    samples: int = 1  # SmoothGrad's noisy copies, Integrated Gradients' steps
    noise: float = 0.15  # SmoothGrad: noise sd / (max - min) of the image (Smilkov et al.)
    baseline: str = "black"  # Integrated Gradients: black | blurred
    blur: float = 0.05  # blurred baseline: Gaussian sd as a fraction of the longer side
    clip: float = 99.0  # the map is divided by this percentile and clipped to 1
    seed: int = 0  # SmoothGrad's noise


# --- the guided graph ---------------------------------------------------------------------------


def _clamp_fn():
    """Identity forward, ``max(g, 0)`` backward, for the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def clamp(x):
            return x

        clamp.defvjp(lambda x: (x, None), lambda _, g: (jnp.maximum(g, 0),))
        return clamp
    if backend == "torch":
        import torch

        class Clamp(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                return g.clamp(min=0)

        return Clamp.apply
    raise NotImplementedError(f"no guided gradient for the {backend!r} backend")


@functools.cache
def _clamp_layer_class():
    import keras

    class GuidedGradient(keras.layers.Layer):
        """Forward the identity; backward only the positive part of the gradient."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._clamp = _clamp_fn()

        def call(self, x):
            return self._clamp(x)

        def compute_output_shape(self, shape):
            return shape

    return GuidedGradient


def is_relu(op) -> bool:
    """A ReLU (or ReLU6) layer, or a layer whose built-in activation is one."""
    import keras

    if isinstance(op, keras.layers.ReLU):
        return float(op.negative_slope) == 0.0
    fn = getattr(op, "activation", None)
    return callable(fn) and getattr(fn, "__name__", "") in ("relu", "relu6")


def guided_model(model):
    """``model`` again with a gradient clamp after every ReLU (module docstring); nested models
    become guided models of their own (so an ensemble's same-named layers stay apart).

    Returns:
        (the guided model, how many ReLUs were guided).
    """
    import keras

    from kerascope.cam.graph import _functional, _nodes

    clamp = _clamp_layer_class()(name="kerascope_guided")
    count = [0]

    def build(m, name: str):
        fn = _functional(m)
        inputs = [keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype) for t in fn.inputs]
        values = {id(t): v for t, v in zip(fn.inputs, inputs, strict=True)}
        for node in _nodes(fn):
            op = node.operation
            if any(id(t) not in values for t in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(values)
            if _functional(op) is not None:
                op = build(op, op.name)
            outs = keras.tree.flatten(op(*args, **kwargs))
            if is_relu(node.operation):
                outs = [clamp(o) for o in outs]
                count[0] += 1
            for t, v in zip(node.outputs, outs, strict=True):
                values[id(t)] = v
        outputs = [values[id(t)] for t in fn.outputs]
        return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)

    return build(model, f"{model.name}_guided"), count[0]


# --- the formulas, written once for both backends (keras.ops) --------------------------------


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, edges repeated (scipy.ndimage's ``nearest``
    mode, truncated at 4 sd): ``blur(x) = B_h x B_w^T`` per channel."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((n, n), np.float64)
    for i in range(n):
        np.add.at(matrix[i], np.clip(np.arange(i - radius, i + radius + 1), 0, n - 1), taps)
    return matrix.astype(np.float32)


def blur_sigma(spec: PixelSpec, size: tuple[int, int]) -> float:
    return max(spec.blur * max(size), 0.5)


def baseline(ops, x, spec: PixelSpec, blur: tuple | None):
    """Integrated Gradients' starting image: black (all zeros) or a Gaussian-blurred copy."""
    if spec.baseline == "black":
        return ops.zeros_like(x)
    rows, cols = blur
    return ops.einsum("ij,njkc,lk->nilc", rows, x, cols)


def attribution(ops, spec: PixelSpec, x, grad: Callable, loop: Callable, noise: Callable, blur):
    """(N, H, W, 3) attributions from ``grad(z)`` (d logit_c / dz at z, the batch's classes).

    ``loop(n, body, init)`` runs ``body(i, acc)`` n times on the device; ``noise(i)`` is the
    i-th (H, W, 3) standard normal draw, the same for every image (so an image's map does not
    depend on the batch it came in).
    """
    if spec.kind in ("gradient", "guided", "guidedcam"):
        return grad(x)
    if spec.kind == "smooth":  # Smilkov et al. 2017, Eq. 3: the mean over noisy copies
        spread = ops.max(x, axis=(1, 2, 3), keepdims=True) - ops.min(
            x, axis=(1, 2, 3), keepdims=True
        )
        sd = spec.noise * spread
        total = loop(spec.samples, lambda i, acc: acc + grad(x + sd * noise(i)), ops.zeros_like(x))
        return total / spec.samples
    if spec.kind == "integrated":  # Sundararajan et al. 2017, Eq. 3: Riemann sum, midpoints
        start = baseline(ops, x, spec, blur)
        path = x - start

        def body(i, acc):
            alpha = (i + 0.5) / spec.samples
            return acc + grad(start + alpha * path)

        return path * loop(spec.samples, body, ops.zeros_like(x)) / spec.samples
    raise ValueError(spec.kind)


def reduce_maps(ops, spec: PixelSpec, attributions):
    """(N, H, W, 3) -> (N, H, W) in [0, 1]: ``max_c |a|`` (gradients: Simonyan et al. 2014,
    Sec. 3.1) or ``ReLU(sum_c a)`` (Integrated Gradients: a pixel's share of the score, kept
    where it supports the class), divided by its ``clip`` percentile and clipped at 1 (a few
    extreme pixels would otherwise leave the rest of the map black)."""
    if spec.reduce == "maxabs":
        maps = ops.max(ops.abs(attributions), axis=-1)
    else:
        maps = ops.relu(ops.sum(attributions, axis=-1))
    flat = ops.reshape(maps, (maps.shape[0], -1))
    level = ops.quantile(flat, spec.clip / 100.0, axis=1)
    level = ops.where(level > 0, level, ops.max(flat, axis=1))
    level = ops.where(level > 0, level, 1.0)[:, None, None]
    return ops.minimum(maps / level, 1.0)


def _cam_maps(ops, resize, a, grads, size):
    """Grad-CAM (``ReLU(sum_k mean(g^k) A^k)``) upsampled to ``size``, peak 1."""
    maps = ops.relu(ops.einsum("nhwk,nk->nhw", a, ops.mean(grads, axis=(1, 2))))
    maps = resize(maps, size)
    peak = ops.max(maps, axis=(1, 2), keepdims=True)
    return ops.where(peak > 0, maps / ops.where(peak > 0, peak, 1.0), 0.0)


# --- per backend ------------------------------------------------------------------------------


def pixel_fn(spec: PixelSpec, plain, guided, probe, score: Callable, precision: str):
    """``run(pixels_uint8, targets, pad_to=None, raw=False) -> PixelResult`` (types above).

    Args:
        plain: ``keras.Model(image, head input)``; guided: the same through `guided_model` (or
            None); probe: ``keras.Model([image, delta], [A, head input])`` for Guided Grad-CAM.
        score: ``score(head input) -> (logits, probabilities)`` with ``keras.ops``.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax(spec, plain, guided, probe, score, precision)
    if backend == "torch":
        return _torch(spec, plain, guided, probe, score, precision)
    raise NotImplementedError(f"no pixel attribution path for the {backend!r} backend")


def _models(spec: PixelSpec, plain, guided, probe) -> dict:
    models = {"plain": plain}
    if spec.kind in ("guided", "guidedcam"):
        models["guided"] = guided
    if spec.kind == "guidedcam":
        models["probe"] = probe
    return models


def _blur_operands(spec: PixelSpec, size: tuple[int, int]):
    if spec.kind != "integrated" or spec.baseline != "blurred":
        return None
    sigma = blur_sigma(spec, size)
    return blur_matrix(size[0], sigma), blur_matrix(size[1], sigma)


def _jax(spec, plain, guided, probe, score, precision):
    import jax
    import jax.numpy as jnp
    from keras import ops

    # Reduced precision: each model's mixed clone, fed the model's own float32 variables
    # (`kerascope.mixed_precision`, the mechanism inference and Grad-CAM use).
    pairs = {
        k: precision_runner(m, precision) for k, m in _models(spec, plain, guided, probe).items()
    }
    models = {k: runner for k, (runner, _) in pairs.items()}
    sources = {k: source for k, (_, source) in pairs.items()}
    traces = [0]
    size = tuple(int(d) for d in plain.inputs[0].shape[1:3])
    blur = _blur_operands(spec, size)
    key_on = "guided" if spec.kind in ("guided", "guidedcam") else "plain"

    @functools.partial(jax.jit, static_argnames=("raw",))
    def run(variables, pixels, targets, raw):
        traces[0] += 1  # a Python side effect runs once per trace: this counts compilations
        x = pixels.astype("float32")  # uint8 crosses to the device; the cast is compiled in

        def logits(name, *inputs):
            tv, ntv = variables[name]
            given = inputs[0] if len(inputs) == 1 else list(inputs)
            out, _ = models[name].stateless_call(tv, ntv, given, training=False)
            return out

        logit, probs = score(logits("plain", x).astype("float32"))
        classes = jnp.where(targets < 0, jnp.argmax(logit, axis=-1), targets)
        onehot = jax.nn.one_hot(classes, logit.shape[-1], dtype="float32")

        def grad(z):  # float16: the class score's gradient loss-scaled, as Grad-CAM's
            def f(z):
                return score(logits(key_on, z).astype("float32"))[0]

            out, vjp = jax.vjp(f, z)
            return scaled_vjp(vjp, onehot.astype(out.dtype), precision)

        key = jax.random.key(spec.seed)

        def noise(i):
            return jax.random.normal(jax.random.fold_in(key, i), x.shape[1:], "float32")

        def loop(n, body, init):
            return jax.lax.fori_loop(0, n, body, init)

        attr = attribution(ops, spec, x, grad, loop, noise, blur)
        if spec.kind == "guidedcam":
            delta0 = jnp.zeros((x.shape[0], *models["probe"].inputs[1].shape[1:]), "float32")

            def cam_logits(delta):
                a, h = logits("probe", x, delta)
                return score(h.astype("float32"))[0], a

            out, vjp, a = jax.vjp(cam_logits, delta0, has_aux=True)
            grads = scaled_vjp(vjp, onehot.astype(out.dtype), precision)

            def resize(m, hw):
                return jax.image.resize(m, (m.shape[0], *hw), "bilinear")

            cam = _cam_maps(ops, resize, a.astype("float32"), grads.astype("float32"), size)
            attr = attr * cam[..., None]
        picked = jnp.take_along_axis(logit if raw else probs, classes[:, None], 1)[:, 0]
        out = attr if raw else reduce_maps(ops, spec, attr)
        return out.astype("float32"), classes, picked.astype("float32")

    def call(pixels, targets, pad_to=None, raw=False) -> PixelResult:
        n = len(pixels)
        pixels, targets = _pad(pixels, targets.astype(np.int32), padded_size(n, pad_to))
        variables = {
            k: (
                [v.value for v in m.trainable_variables],
                [v.value for v in m.non_trainable_variables],
            )
            for k, m in sources.items()
        }
        with fast_convs():  # traced on a CPU: depthwise gradients ~4x faster (fast_convs)
            out = run(variables, pixels, targets, bool(raw))
        return tuple(np.asarray(o)[:n] for o in out)

    call.traces = lambda: traces[0]
    return call


def _torch(spec, plain, guided, probe, score, precision):
    import keras
    import torch
    import torch.nn.functional as F
    from keras import ops

    models = _models(spec, plain, guided, probe)
    size = tuple(int(d) for d in plain.inputs[0].shape[1:3])
    blur = _blur_operands(spec, size)
    reduced = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    key_on = "guided" if spec.kind in ("guided", "guidedcam") else "plain"

    def loop(n, body, init):
        acc = init
        for i in range(n):
            acc = body(i, acc)
        return acc

    def call(pixels, targets, pad_to=None, raw=False) -> PixelResult:
        n = len(pixels)
        pixels, targets = _pad(pixels, targets, padded_size(n, pad_to))
        x = keras.ops.convert_to_tensor(pixels).to(torch.float32)
        autocast = torch.autocast(x.device.type, dtype=reduced or torch.float32,
                                  enabled=bool(reduced))  # fmt: skip
        blur_t = None if blur is None else tuple(torch.as_tensor(b, device=x.device) for b in blur)
        with torch.no_grad(), autocast:
            logit, probs = score(models["plain"](x, training=False).float())
        t = torch.as_tensor(targets, device=x.device, dtype=torch.long)
        classes = torch.where(t < 0, logit.argmax(-1), t)

        def grad(z):
            z = z.detach().requires_grad_(True)
            with autocast:
                h = models[key_on](z, training=False)
            picked = score(h.float())[0].gather(1, classes[:, None]).sum()
            return _torch_scaled_grad(picked, z, precision).detach()

        def noise(i):
            gen = torch.Generator(device=x.device).manual_seed(spec.seed * 1_000_003 + int(i))
            return torch.randn(x.shape[1:], generator=gen, device=x.device)

        attr = attribution(ops, spec, x, grad, loop, noise, blur_t)
        if spec.kind == "guidedcam":
            delta = torch.zeros((len(x), *models["probe"].inputs[1].shape[1:]), device=x.device,
                                requires_grad=True)  # fmt: skip
            with autocast:
                a, h = models["probe"]([x, delta], training=False)
            picked = score(h.float())[0].gather(1, classes[:, None]).sum()
            grads = _torch_scaled_grad(picked, delta, precision)

            def resize(m, hw):
                return F.interpolate(m[:, None], hw, mode="bilinear", align_corners=False)[:, 0]

            with torch.no_grad():
                attr = (
                    attr
                    * _cam_maps(ops, resize, a.detach().float(), grads.float(), size)[..., None]
                )
        with torch.no_grad():
            picked = (logit if raw else probs).gather(1, classes[:, None])[:, 0].float()
            out = attr if raw else reduce_maps(ops, spec, attr)
        return tuple(v.detach().cpu().numpy()[:n] for v in (out.float(), classes, picked))

    call.traces = lambda: 0
    return call
