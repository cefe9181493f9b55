"""The zoo's plain-data types (model specs, weights sources, input conventions) and the table
they are registered in.

Why a module of its own: the modules that define the built-in specs (`efficientnet_lite`,
`applications`) register into this table, and `registry` imports them to look specs up, so the
types live below both (each layer imports only downward; DESIGN.md, "Import direction").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Preprocessing modes (what ``preprocess_input`` of each Keras family does), applied inside the
# model graph by ``zoo.preprocess`` so callers always feed raw RGB 0..255 pixels.
PREPROCESS_MODES = ("caffe", "tf", "torch", "lite", "none")


@dataclass(frozen=True)
class InputConvention:
    """How the weights were evaluated, timm-style: it belongs to the checkpoint, not the network.

    ``resize``: ``"squash"`` scales the whole picture to the input size (aspect ratio not
    kept); ``"crop"`` scales the shorter side to ``size / crop_fraction`` and cuts the centre
    (how published top-1 figures are measured, e.g. 0.875 = 224 from 256). ``interpolation``
    is the resampling filter of that evaluation.
    """

    resize: str = "squash"
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"  # or "bicubic", the filter the EfficientNet papers use


@dataclass(frozen=True)
class WeightsSource:
    """Where the ImageNet weights of a model come from, in the order they are tried."""

    filename: str  # file name in the cache directory
    url: str | None = None  # Keras's own download URL (hash-checked)
    file_hash: str | None = None
    package: str | None = None  # installed distribution carrying the weights offline
    package_file: str | None = None  # path inside that package
    converter: str | None = None  # dotted function turning the package file into the cache file
    # The file for the model without its classifier (``include_top=False``), where the family
    # ships one: Keras's ``*_notop.h5``. None: the one file serves both.
    notop: WeightsSource | None = None
    convention: InputConvention = field(default_factory=InputConvention)

    def for_top(self, include_top: bool) -> WeightsSource:
        """The source for a model built with or without its classifier."""
        return self if include_top or self.notop is None else self.notop


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: builder, input, preprocessing, heatmap layer and published numbers."""

    name: str
    family: str
    builder: str  # "module:function", imported only when the model is built
    input_size: int
    preprocess: str  # one of PREPROCESS_MODES
    cam_layer: str | None  # last 4-D feature layer, used for heatmaps
    params: int  # parameter count (millions are derived)
    depth: int | None
    size_mb: float
    top1: float | None
    top5: float | None
    weights: WeightsSource
    keras_name: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Extra keyword arguments for the builder (e.g. include_preprocessing=False).
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def builder_fn(self) -> Callable[..., Any]:
        module, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    if not isinstance(name, str):  # a list was "'list' object has no attribute 'strip'"
        raise TypeError(f"a model name is one string (a zoo name), got {name!r:.60}")
    return name.strip().lower().replace("-", "_")


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; its name, Keras class name and aliases all resolve to it."""
    _REGISTRY[spec.name] = spec
    for alias in (spec.name, spec.keras_name, *spec.aliases):
        if alias:
            _ALIASES[_key(alias)] = spec.name
    return spec
