"""The one backend-specific file: d(class score) / d(target-layer activations), per backend.

Every backend sees the same graph: ``probe([image, delta]) -> [features, head_input]``, where
``delta`` is a zero tensor added to the target layer's output inside the graph. The gradient
with respect to ``delta`` at zero *is* the gradient with respect to the activations, and works
for any graph (skip connections around the target layer, nested models) without hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
