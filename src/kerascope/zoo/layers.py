"""Layer numbering as Keras's own applications count it, for `models layers` and `--unfreeze`.

kerascope puts its preprocessing layer between the input and the backbone, which would shift
every index by one against the Keras guides ("freeze the first 249 layers" of InceptionV3).
Leaving that layer out of the count keeps the guides' numbers valid here.
"""

from __future__ import annotations

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
