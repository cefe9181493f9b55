"""Feature branches: ``Input -> Resizing -> backbone [-> layer] -> pool``, and their forward.

The HDF5 cache (`store`) and the ``features`` recipe's model (`kerascope.training.recipes`) are
built from the same branches, so cached features and the saved model agree by construction.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.config import ensure_backend
from kerascope.errors import KerascopeError

POOLS = ("avg", "max", "none")
Forward = Callable[[np.ndarray], np.ndarray]


class FeatureCacheError(KerascopeError, RuntimeError):
    """A feature file or group that cannot be used as asked; the message says why and the fix."""


@dataclass(frozen=True)
class FeatureSpec:
    """What produces one feature group: backbone, layer, pooling and the size images arrive at.

    ``image_size`` may exceed the backbone's own input size: images are then decoded at
    ``image_size`` and resized inside the graph, as in an ensemble of backbones of several sizes.
    A smaller ``image_size`` runs the backbone at that size (VGG16 at the tutorial's 150 px
    gives 4x4x512 maps), as the ``features`` and ``transfer`` recipes run it.
    """

    backbone: str
    layer: str | None = None
    pool: str = "avg"
    image_size: int | None = None
    weights: str | None = None  # explicit weights file; None for the zoo's ImageNet weights
    precision: str = "float32"  # what the body computes in (`kerascope.precision`)

    @classmethod
    def make(cls, backbone: str, layer=None, pool="avg", image_size=None, weights=None,
             precision: str = "float32"):  # fmt: skip
        """Canonical names, sizes and precision, so equal settings give equal keys."""
        from kerascope.batch_sizes import whole_number
        from kerascope.precision import resolve_precision
        from kerascope.zoo import registry

        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        spec = registry.get(backbone)
        if hasattr(image_size, "item"):
            image_size = image_size.item()  # a NumPy number
        size = spec.input_size if image_size is None else whole_number("image_size", image_size, 1)
        return cls(spec.name, layer or None, pool, size, str(weights) if weights else None,
                   resolve_precision(precision))  # fmt: skip

    @property
    def input_size(self) -> int:
        from kerascope.zoo import registry

        return registry.get(self.backbone).input_size

    @property
    def body_size(self) -> int:
        """The side the backbone runs at: its own, or the images' when they are smaller."""
        return min(int(self.image_size or self.input_size), self.input_size)

    @property
    def key(self) -> str:
        layer = self.layer or "last"
        key = f"{self.backbone},layer={layer},pool={self.pool},size={self.image_size}"
        # Reduced-precision features are another group: never mixed with float32 ones.
        return key if self.precision == "float32" else f"{key},precision={self.precision}"


def weights_file(spec: FeatureSpec) -> Path:
    from kerascope.zoo import registry, weights

    return weights.resolve(registry.get(spec.backbone), spec.weights, include_top=False)


def weights_per_backbone(weights: Any, backbones: Sequence[str]) -> list:
    """One weights file (or None: the zoo's) per backbone."""
    if weights is None:
        return [None] * len(backbones)
    files = [weights] if isinstance(weights, str | os.PathLike) else list(weights)
    if len(files) != len(backbones):
        raise FeatureCacheError(f"give one weights file per backbone ({len(backbones)}, "
                                f"comma-separated), got {len(files)}")  # fmt: skip
    return files


_SUMS: dict[tuple, str] = {}


def weights_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SUMS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SUMS[key] = digest.hexdigest()
    return _SUMS[key]


def build_body(spec: FeatureSpec, input_shape: tuple[int, int, int] | None = None) -> Any:
    """Backbone up to ``spec.layer``, pooled; preprocessing inside. It runs at
    ``spec.body_size`` unless ``input_shape`` says otherwise (the ``features`` recipe on small
    images that are not square)."""
    ensure_backend()
    import keras

    from kerascope.zoo.models import build

    weights = spec.weights or "imagenet"
    if input_shape is None and spec.body_size != spec.input_size:
        input_shape = (spec.body_size, spec.body_size, 3)
    shape = {"input_shape": tuple(input_shape)} if input_shape else {}
    pooling = spec.pool if spec.layer is None and spec.pool != "none" else None
    try:
        base = build(spec.backbone, weights=weights, include_top=False, pooling=pooling, **shape)
    except ValueError:
        side = "x".join(str(v) for v in (input_shape or (spec.input_size,) * 2)[:2])
        raise FeatureCacheError(
            f"'{spec.backbone}' cannot run on {side} images: its layers shrink them to nothing; "
            f"use a larger image size (it was trained at {spec.input_size})"
        ) from None
    if pooling is not None:
        return base
    x = base.output
    if spec.layer is not None:
        names = [layer.name for layer in base.layers]
        if spec.layer not in names:
            close = difflib.get_close_matches(spec.layer, names, n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise FeatureCacheError(
                f"'{spec.backbone}' has no layer '{spec.layer}'{hint} ({len(names)} layers; "
                f"`kerascope models layers {spec.backbone}` lists them)"
            )
        x = base.get_layer(spec.layer).output
    if spec.pool != "none" and len(x.shape) == 4:
        pool = (
            keras.layers.GlobalAveragePooling2D
            if spec.pool == "avg"
            else keras.layers.GlobalMaxPooling2D
        )
        x = pool(name=f"{spec.pool}_pool")(x)
    return keras.Model(base.input, x, name=f"{spec.backbone}_{spec.layer or 'last'}_{spec.pool}")


def resizer(spec: FeatureSpec) -> Any | None:
    """The in-graph resize from ``image_size`` to the backbone's size (None when equal)."""
    import keras

    size = spec.input_size
    if spec.image_size <= size:
        return None  # the backbone runs at the images' size (`FeatureSpec.body_size`)
    return keras.layers.Resizing(size, size, name=f"resize_{spec.backbone}")


_FORWARDS: dict[tuple, tuple[Forward, tuple]] = {}


def forward_for(spec: FeatureSpec, precision: str | None = None) -> tuple[Forward, tuple[int, ...]]:
    """A fast uint8 -> features function and its row shape, built once per spec, weights and
    precision (``precision``, else ``spec.precision``; reduced precision runs on the keras
    engine).

    The body runs on the inference engine ``classify`` uses (onnxruntime on CPU when it converts,
    else jitted Keras, batches padded to a few fixed shapes); the resize, which the ONNX
    converter does not cover, runs as the Keras ``Resizing`` layer itself: the same op the
    ensemble model applies. ``run(x, batch_size=None)``: ``batch_size`` is the job's, which
    picks the shape an odd last batch is padded to (`kerascope.sources.bucket`).
    """
    from kerascope.inference import compiled
    from kerascope.precision import resolve_precision

    precision = resolve_precision(precision or spec.precision)
    cache_key = (spec, weights_checksum(weights_file(spec)), precision)
    if cache_key not in _FORWARDS:
        import keras

        body = build_body(spec)
        run = compiled(body, precision=precision)
        resize = resizer(spec)
        if resize is not None:
            inner = run

            def run(x: np.ndarray, batch_size: int | None = None, job: int | None = None):
                rows = inner.rows(len(x), batch_size, job)  # resize the padded batch: one shape
                padded = x if rows == len(x) else np.concatenate(
                    [x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])  # fmt: skip
                resized = keras.ops.convert_to_numpy(resize(padded.astype("float32")))
                return inner(resized, batch_size, job)[: len(x)]

        while len(_FORWARDS) >= 4:  # models are large; keep the few a session alternates
            _FORWARDS.pop(next(iter(_FORWARDS)))
        _FORWARDS[cache_key] = (run, tuple(int(d) for d in body.output_shape[1:]))
    return _FORWARDS[cache_key]


def features(
    images: Any,
    model: str = "efficientnet_lite0",
    layer: str | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    batch_size: int = 32,
    weights: str | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Features of images given as paths, folders, globs, RGB arrays or PIL Images; no cache.

    ``precision``: float32 (the default: features are stored and compared, so they do not
    change with the machine), bfloat16, float16 or auto (bfloat16 on GPUs that compute it
    natively, float32 elsewhere). The features come back as float32 whatever the precision.

    Example:
        >>> kerascope.features("cat.jpg", layer="blocks_9_add", pool="max").shape  # doctest: +SKIP
        (1, 112)
    """
    from kerascope.images import ImageError
    from kerascope.sources import iter_pixel_batches, normalise_inputs

    spec = FeatureSpec.make(model, layer, pool, image_size, weights)
    sources, _, missing = normalise_inputs(images)
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(map(str, missing[:5]))}")
    run, shape = forward_for(spec, precision)
    out = [np.zeros((0, *shape), np.float32)]
    size = (spec.image_size, spec.image_size)
    for batch in iter_pixel_batches(sources, size, batch_size):
        for name, error in zip(batch.names, batch.errors, strict=True):
            if error is not None:
                raise ImageError(name, error)
        out.append(run(batch.pixels, batch_size, len(sources)))  # a last batch: its bucket
    return np.concatenate(out)
