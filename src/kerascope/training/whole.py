"""Whole-graph training (``--engine keras``, the GPU default with augmentation): the uint8
batch goes to the device as it is, and augmentation, cast, forward, backward and update run in
the one jitted Keras train step.

Two pieces:

* :class:`AugmentedTrainer`, a ``keras.Model`` around the network being trained. It takes
  ``{"image": uint8 batch, "matrices": (N, 2, 3)}`` and resamples the batch on the device with
  :func:`kerascope.data.augment.warp` before calling the network; plain images (validation,
  no augmentation) are only cast. Its variables *are* the network's, so training it trains the
  network, and ``model.keras`` is saved from the network: no augmentation, no extra input.
* :class:`DeviceFeed`, the batches: the decoded-once uint8 cache, the augmentation matrices of
  :func:`kerascope.data.augment.sample_matrices` (the one definition, same draws as the CPU
  trainer's Pillow executor), labels and sample weights. Every batch has the full batch shape,
  the last partial one padded with weight-0 rows, so the step compiles once per stage, not
  again for the last batch. On an accelerator each batch is ``jax.device_put`` by the worker
  thread that prepared it, so the next batches are already on the device (prefetch depth =
  the queue, at least 2) while the current one trains; on several devices of one process it
  is put there already split over them as Keras's ``DataParallel`` lays it out, so Keras's own
  placement in the step loop finds it in place (a no-op) instead of copying it there.

Weights, loss and accuracy of the padded batches: `kerascope.training.padded` (each step
trains on its real rows' mean, the epoch's loss is the exact mean over its images), shared with
the split trainer's batches (``kerascope.training.split.PrefixSequence``).
"""

from __future__ import annotations

import os
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.augment import AugmentConfig, policy_plan, sample_matrices, warp  # noqa: E402
from kerascope.data.loader import DerivedSequence, FolderSequence  # noqa: E402
from kerascope.data.policy import apply_colour  # noqa: E402
from kerascope.data.regularise import (  # noqa: E402
    RegulariseConfig,
    mix_ops,
    sample_mix,
    soft_targets,
)
from kerascope.training.padded import PaddedLoss, row_weights, sample_weights  # noqa: E402

PREFETCH = 4  # batches prepared (and transferred) ahead of the step


class AugmentedTrainer(PaddedLoss, keras.Model):
    """``network`` with the augmentation in front, for ``fit`` only (see the module doc); its
    ``loss`` is the mean over real rows (`kerascope.training.padded.PaddedLoss`)."""

    def __init__(self, network: Any, fill_mode: str = "nearest", **kwargs: Any):
        super().__init__(name=f"{network.name}_trainer", **kwargs)
        self.network = network
        self.fill_mode = fill_mode
        self.built = True  # the network is built; nothing of its own to create

    def call(self, inputs: Any, training: bool = False) -> Any:
        if isinstance(inputs, dict):
            if "matrices" in inputs:
                x = warp(inputs["image"], inputs["matrices"], self.fill_mode)
            else:
                x = keras.ops.cast(inputs["image"], "float32")
            if "colour" in inputs:  # the augment policy's colour operations
                x = apply_colour(x, inputs["colour"])
            if "partner" in inputs:  # mixup / CutMix, after the warp as on the host
                x = mix_ops(x, inputs["partner"], inputs["boxes"])
        else:
            x = keras.ops.cast(inputs, "float32")
        return self.network(x, training=training)


def on_accelerator() -> bool:
    """Whether the JAX backend computes on something other than the host CPU."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() != "cpu"


class DeviceFeed(DerivedSequence):
    """Full-shape batches ``(inputs, labels, sample_weights)`` of a :class:`FolderSequence`
    for :class:`AugmentedTrainer` (see the module doc).

    Args:
        images: the uint8 batches (its batch size, order and epoch are used).
        augment: the augmentation, or None for plain images (validation).
        seed: the run's seed; batch ``b`` of epoch ``e`` draws ``(seed, e, b)``.
        class_weight: ``{class index: weight}`` folded into the sample weights.
        workers: threads preparing batches (a cache read and a transfer each).
        transfer: ``jax.device_put`` each batch in the worker (default: on an accelerator).
        regularise: label smoothing / mixup / CutMix (training), or for validation an
            inactive config: one-hot targets (the loss then takes soft targets).
    """

    def __init__(
        self,
        images: FolderSequence,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        class_weight: dict[int, float] | None = None,
        workers: int | None = None,
        transfer: bool | None = None,
        regularise: RegulariseConfig | None = None,
    ):
        super().__init__(threads=workers or max(2, min(PREFETCH, os.cpu_count() or 1)),
                         ahead=PREFETCH)  # fmt: skip
        self.images, self.seed = images, int(seed)
        self.augment = None if augment is None or augment.is_identity else augment
        self.row_weight = row_weights(images, class_weight)
        # Keras's distribution and `jax.default_device` are the creating thread's (thread-local
        # state), not the feed's threads': both are read here.
        distribution = keras.distribution.distribution()
        if transfer is None:  # several processes: each hands Keras its rows of the batch
            transfer = on_accelerator() and (distribution is None
                                             or distribution.num_processes == 1)  # fmt: skip
        self.transfer = transfer
        self.device = self.distribution = None
        if transfer:
            import jax

            self.device = jax.config.jax_default_device  # training.devices' one-device choice
            self.distribution = distribution
        self.regularise = regularise

    def make_batch(self, index: int) -> tuple[Any, np.ndarray, np.ndarray]:
        seq = self.images
        rows, real = seq.padded_rows(index)  # one shape: no second compile for the last batch
        size = len(rows)
        pixels = seq.load_rows(rows, seq.fed_part(size))  # another process's rows: zeros
        labels = seq.labels[rows]
        weights = sample_weights(labels, real, self.row_weight)
        inputs: Any = pixels
        height, width = pixels.shape[1:3]
        if self.augment is not None:
            matrices = sample_matrices(self.augment, self.seed, self.epoch, index, size, height,
                                       width)  # fmt: skip
            inputs = {"image": pixels, "matrices": matrices}
            if self.augment.policy:
                plan = policy_plan(self.augment, self.seed, self.epoch, index, size, height, width)
                inputs["colour"] = plan.colour
        targets: Any = labels
        if self.regularise is not None:  # soft targets; the pixels are mixed on the device
            r = self.regularise
            plan = sample_mix(r, self.seed, self.epoch, index, size, height, width, real)
            if plan.kind != "none":
                inputs = inputs if isinstance(inputs, dict) else {"image": pixels}
                inputs.update(partner=plan.partner.astype(np.int32), boxes=plan.boxes)
            targets = soft_targets(labels, len(seq.classes), plan, r.label_smoothing)
        batch = (inputs, targets, weights)
        return self._put(batch) if self.transfer else batch

    def _put(self, batch: Any) -> Any:
        """``batch`` on the device(s), from the worker thread that made it."""
        import jax

        if self.distribution is not None:  # each array split by rows as Keras lays it out
            layout = self.distribution.get_data_layout
            return jax.tree.map(lambda a: jax.device_put(a, layout(a.shape).backend_layout),
                                batch)  # fmt: skip
        # uncommitted, like the model's state: a batch committed to a named device made the
        # train step compile again for the state it came back with
        with jax.default_device(self.device):
            return jax.device_put(batch)
