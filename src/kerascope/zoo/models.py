"""Build zoo models and load saved ones into one shape: a `Classifier`.

A `Classifier` is what every job needs: a Keras model taking RGB 0..255 pixels and returning
class probabilities, its input size, the label of each output and the layer for heatmaps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend
from kerascope.errors import KerascopeError
from kerascope.zoo import registry
from kerascope.zoo.fast_init import numpy_init
from kerascope.zoo.registry import ModelSpec

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass
class Classifier:
    """A ready model plus what is needed to read its outputs."""

    model: Any  # keras.Model: RGB 0..255 (N, H, W, 3) -> probabilities (N, classes)
    name: str
    input_size: tuple[int, int]  # (height, width)
    labels: list[tuple[str, str]]  # per output index: (id, readable name); id = WordNet id
    cam_layer: str | None = None
    spec: ModelSpec | None = None
    source: str = ""  # where the weights came from, for reports
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _imagenet_labels() -> list[tuple[str, str]]:
    from kerascope.zoo.imagenet import class_index

    return [(wnid, name) for wnid, name in class_index()]


def build(
    name: str | ModelSpec,
    weights: str | os.PathLike | None = "imagenet",
    **builder_kwargs: Any,
):
    """Build a zoo network (RGB 0..255 in) with ImageNet, random (``None``) or given weights.

    Extra keyword arguments go to the builder (``include_top=False, pooling="avg"`` for a
    backbone, ``input_shape=...``). Preprocessing is always part of the graph.
    """
    ensure_backend()
    import keras

    from kerascope.zoo import weights as weights_mod
    from kerascope.zoo.preprocess import ImagePreprocess

    spec = registry.get(name) if isinstance(name, str) else name
    path = None
    if weights is not None:
        explicit = None if weights == "imagenet" else weights
        with numpy_init():  # a first use may port packaged weights into a model built for that
            path = weights_mod.resolve(spec, explicit)
    kwargs = {**spec.builder_kwargs, **builder_kwargs}
    builder = spec.builder_fn()
    # Weights about to be loaded: draw the throwaway initial values with NumPy (on JAX, Keras
    # would compile an initializer for every weight shape, most of a cold start).
    with numpy_init(enabled=path is not None):
        if spec.family == "efficientnet_lite":
            model = builder(**kwargs)
        else:
            size = kwargs.pop("input_shape", None) or (spec.input_size, spec.input_size, 3)
            inputs = keras.Input(shape=size, name="image")
            x = ImagePreprocess(spec.preprocess, name="preprocess")(inputs)
            model = builder(input_tensor=x, weights=None, **kwargs)
    if path is not None:
        if spec.family == "efficientnet_lite" or str(path).endswith(".weights.h5"):
            model.load_weights(str(path))
        else:
            _load_keras_app_weights(model, path)
    return model


def _load_keras_app_weights(model, path: Path) -> None:
    """Keras applications ship legacy .h5 files (matched to layers in order; ours add none)."""
    model.load_weights(str(path), skip_mismatch=False)


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, weights=None) -> Classifier:
    """Load a zoo model by name, or a ``.keras`` file saved by kerascope or plain Keras.

    Example:
        >>> clf = load_model("efficientnet_lite0")
        >>> clf.input_size
        (224, 224)
    """
    text = str(name_or_path)
    if text.endswith(".keras") or Path(text).is_dir() or Path(text).is_file():
        return _load_file(Path(text))
    spec = registry.get(text)
    model = build(spec, weights=weights or "imagenet")
    return Classifier(
        model=model,
        name=spec.name,
        input_size=(spec.input_size, spec.input_size),
        labels=_imagenet_labels(),
        cam_layer=spec.cam_layer,
        spec=spec,
        source=str(weights or spec.weights.filename),
    )


class ModelFileError(KerascopeError, RuntimeError):
    """A model file or run directory that cannot be used; the message says why."""


def _load_file(path: Path) -> Classifier:
    ensure_backend()
    import keras

    import kerascope.zoo.preprocess  # noqa: F401  (registers custom layers before loading)

    run_dir = path if path.is_dir() else path.parent
    model_path = path / "model.keras" if path.is_dir() else path
    if not model_path.is_file():
        raise ModelFileError(f"no model file at '{model_path}'")
    try:
        with numpy_init():  # every weight is then read from the file
            model = keras.saving.load_model(str(model_path), compile=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot load model '{model_path}': {first}") from None
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    classes = int(model.output_shape[-1])
    labels_file = run_dir / "labels.json"
    if labels_file.is_file():
        names = json.loads(labels_file.read_text())
        names = names["classes"] if isinstance(names, dict) else names
        labels = [(str(i), n) for i, n in enumerate(names)]
    elif classes == 1000:
        labels = _imagenet_labels()
    else:
        labels = [(str(i), f"class_{i}") for i in range(classes)]
    if len(labels) != classes:
        raise ModelFileError(
            f"'{labels_file}' lists {len(labels)} classes but the model outputs {classes}"
        )
    return Classifier(
        model=model,
        name=model_path.stem if not path.is_dir() else path.name,
        input_size=(int(shape[1]), int(shape[2])),
        labels=labels,
        source=str(model_path),
    )
