"""Batch regularisers: label smoothing, mixup and CutMix, one definition and two executors.

Like the seed augmentation (:mod:`kerascope.data.augment`), what a regulariser does to a batch is
drawn once, on the host, from ``(seed, epoch, batch)`` by :func:`sample_mix`: each image's
partner in the batch and the region where the partner shows, as ``(x0, y0, x1, y1, inside,
outside)``: the image keeps the share ``inside`` of its own pixels inside the box and
``outside`` elsewhere. Mixup (Zhang et al. 2018) is ``inside = outside = lambda`` (a convex
combination of the two images, lambda ~ Beta(a, a) per batch); CutMix (Yun et al. 2019) pastes
the partner's box (side ``sqrt(1 - lambda)`` of the image's, clipped at the edges) with
``inside = 0, outside = 1``, and the label share is the area actually kept. When both are on,
each batch takes one of them with probability 1/2 (timm's ``switch_prob``).

The executors read that plan: :func:`mix_host` on the uint8 batch before the split trainer's
frozen prefix (NumPy), :func:`mix_ops` inside the whole-graph trainer's compiled step, after
the device warp (``keras.ops``). The targets are the same on both: :func:`soft_targets` mixes
the one-hot labels with the image's own share and smooths them, ``(1 - e) * t + e / K``
(Szegedy et al. 2016). Validation keeps hard one-hot targets, so ``val_loss`` stays the true
cross-entropy whatever the regularisers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.errors import ConfigError  # noqa: E402

MIX_STREAM = 0x6D6978  # a draw of its own: the augmentation's matrices stay as they were


@dataclass
class RegulariseConfig:
    """Regularisers of a training run (all off by default).

    Attributes:
        label_smoothing: ``e`` in ``(1 - e) * one_hot + e / classes``, in [0, 1).
        mixup: mixup's Beta(a, a) parameter (0: off; 0.2-0.4 usual).
        cutmix: CutMix's Beta(a, a) parameter (0: off; 1.0 usual).
    """

    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        """One line naming the option when a value is out of range."""
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing:g}")
        for name in ("mixup", "cutmix"):
            if not 0 <= getattr(self, name) < float("inf"):  # NaN included
                raise ConfigError(f"{name} is a Beta(a, a) parameter, at least 0 (0: off), got "
                                  f"{getattr(self, name):g}")  # fmt: skip

    @property
    def active(self) -> bool:
        """Whether training targets differ from hard labels (any regulariser on)."""
        return bool(self.label_smoothing or self.mixup or self.cutmix)

    @property
    def mixes(self) -> bool:
        """Whether pixels are mixed (mixup or CutMix): the prefix then runs per batch."""
        return bool(self.mixup or self.cutmix)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RegulariseConfig | None:
        """The run's regularisers from its ``config.yaml`` values, None when all are off."""
        made = cls(*(float(config.get(k) or 0.0) for k in ("label_smoothing", "mixup", "cutmix")))
        return made if made.active else None


@dataclass
class MixPlan:
    """One batch's mixing: ``partner`` (N,) int rows, ``boxes`` (N, 6) float32 ``x0, y0, x1,
    y1, inside, outside`` (pixel ``x0 <= x < x1``, ``y0 <= y < y1`` is inside), and ``own``
    (N,) float32, each image's share of its own label."""

    partner: np.ndarray
    boxes: np.ndarray
    own: np.ndarray
    kind: str  # "mixup", "cutmix" or "none"


def sample_mix(config: RegulariseConfig, seed: int, epoch: int, batch: int, n: int,
               height: int, width: int, real: int | None = None) -> MixPlan:  # fmt: skip
    """The mixing of one batch, drawn from ``(seed, epoch, batch)``: the one definition both
    executors apply (see the module doc). ``real``: the batch's real rows when the rest pad it
    (`kerascope.training.padded`); they mix among themselves, as in an unpadded batch (a real
    row's partner was a padding copy of row 0 with probability (n - real) / n).

    Example:
        >>> plan = sample_mix(RegulariseConfig(mixup=0.2), 0, 0, 0, n=4, height=8, width=8)
        >>> plan.partner.shape, plan.boxes.shape, plan.kind
        ((4,), (4, 6), 'mixup')
    """
    rng = np.random.default_rng([int(seed), int(epoch), int(batch), MIX_STREAM])
    boxes = np.tile(np.array([0, 0, width, height, 1, 1], np.float32), (n, 1))
    if not config.mixes:
        return MixPlan(np.arange(n), boxes, np.ones(n, np.float32), "none")
    kind = "mixup" if config.mixup else "cutmix"
    if config.mixup and config.cutmix:
        kind = "cutmix" if rng.random() < 0.5 else "mixup"
    alpha = config.mixup if kind == "mixup" else config.cutmix
    lam = float(rng.beta(alpha, alpha))
    real = n if real is None else min(int(real), n)
    partner = np.concatenate([rng.permutation(real), np.arange(real, n)])
    if kind == "mixup":
        boxes[:, 4:] = lam
        return MixPlan(partner, boxes, np.full(n, lam, np.float32), kind)
    side = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * side), int(height * side)
    cx, cy = rng.integers(0, width), rng.integers(0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    boxes[:] = [x0, y0, x1, y1, 0.0, 1.0]
    own = 1.0 - (x1 - x0) * (y1 - y0) / float(width * height)  # the area actually kept
    return MixPlan(partner, boxes, np.full(n, own, np.float32), kind)


def _own_share(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 1) float32: the share of each pixel taken from the image itself."""
    ys = np.arange(height, dtype=np.float32)[None, :, None]
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    b = boxes[:, :, None, None]
    inside = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
    return np.where(inside, b[:, 4], b[:, 5])[..., None].astype(np.float32)


def mix_host(images: np.ndarray, plan: MixPlan) -> np.ndarray:
    """The host executor: a uint8 (N, H, W, C) batch mixed as ``plan`` says, uint8 again
    (mixup's blend rounded to the nearest grey level)."""
    if plan.kind == "none":
        return images
    share = _own_share(plan.boxes, *images.shape[1:3])
    mixed = share * images.astype(np.float32) + (1 - share) * images[plan.partner]
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def mix_ops(images: Any, partner: Any, boxes: Any) -> Any:
    """The device executor: float (N, H, W, C) ``images`` mixed with ``images[partner]`` by
    ``boxes`` (from :func:`sample_mix`), in ``keras.ops`` so it traces into the train step."""
    ops = keras.ops
    height, width = int(images.shape[1]), int(images.shape[2])
    b = ops.cast(boxes, "float32")[:, :, None, None]
    ys = ops.arange(height, dtype="float32")[None, :, None]
    xs = ops.arange(width, dtype="float32")[None, None, :]
    inside = ops.logical_and(ops.logical_and(xs >= b[:, 0], xs < b[:, 2]),
                             ops.logical_and(ys >= b[:, 1], ys < b[:, 3]))  # fmt: skip
    share = ops.where(inside, b[:, 4], b[:, 5])[..., None]
    other = ops.take(images, ops.cast(partner, "int32"), axis=0)
    return share * images + (1 - share) * other


def soft_targets(labels: np.ndarray, classes: int, plan: MixPlan | None = None,
                 smoothing: float = 0.0) -> np.ndarray:  # fmt: skip
    """(N, classes) float32 targets: one-hot ``labels``, mixed with the partners' by the
    plan's shares, then smoothed: ``(1 - smoothing) * t + smoothing / classes``."""
    eye = np.eye(classes, dtype=np.float32)
    targets = eye[labels]
    if plan is not None and plan.kind != "none":
        own = plan.own[:, None]
        targets = own * targets + (1 - own) * targets[plan.partner]
    if smoothing:
        targets = (1 - smoothing) * targets + smoothing / classes
    return targets.astype(np.float32)


def regularise_batch(config: RegulariseConfig, seed: int, epoch: int, batch: int,
                     images: np.ndarray, labels: np.ndarray, classes: int,
                     real: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The host path in one call: the batch mixed (uint8) and its soft targets."""
    n, height, width = images.shape[:3]
    plan = sample_mix(config, seed, epoch, batch, n, height, width, real)
    return mix_host(images, plan), soft_targets(labels, classes, plan, config.label_smoothing)
