"""Layer numbering as Keras's own applications count it, for `models layers` and `--unfreeze`.

kerascope puts its preprocessing layer between the input and the backbone, which would shift
every index by one against the Keras guides ("freeze the first 249 layers" of InceptionV3).
Leaving that layer out of the count keeps the guides' numbers valid here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def numbered_layers(model: Any) -> list[tuple[int, Any]]:
    """``(index, layer)`` for the layers of ``model``, numbered as ``keras.applications`` does.

    The index of a layer is its position in ``model.layers`` of the plain Keras application
    (``keras.applications.InceptionV3(include_top=False).layers``): kerascope's
    preprocessing layers are skipped.
    """
    from kerascope.zoo.preprocess import ImagePreprocess

    kept = [layer for layer in model.layers if not isinstance(layer, ImagePreprocess)]
    return list(enumerate(kept))


@dataclass(frozen=True)
class LayerRow:
    """One line of `kerascope models layers`: what a guide's ``print(i, layer.name)`` shows."""

    index: int
    name: str
    kind: str  # the layer class, e.g. Conv2D
    output_shape: tuple
    params: int
    cam_default: bool  # the layer heatmaps use unless told otherwise


def backbone_layers(name: str) -> list[LayerRow]:
    """The layers of ``name``'s backbone (no classifier), built with random weights.

    NumPy draws the throwaway weights, so listing even a large model takes seconds, not the
    minutes of compiling every initializer; no weights file is needed.
    """
    from kerascope.zoo import registry
    from kerascope.zoo.fast_init import numpy_init
    from kerascope.zoo.models import build

    spec = registry.get(name)
    with numpy_init():
        model = build(spec, weights=None, include_top=False)
    rows = []
    for index, layer in numbered_layers(model):
        output = layer.output
        shape = tuple(output.shape) if hasattr(output, "shape") else ()
        rows.append(LayerRow(index, layer.name, type(layer).__name__, shape,
                             int(layer.count_params()), layer.name == spec.cam_layer))  # fmt: skip
    return rows
