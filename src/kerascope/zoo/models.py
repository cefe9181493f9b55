"""Build zoo models and load saved ones into one shape: a `Classifier`.

A `Classifier` is what every job needs: a Keras model taking RGB 0..255 pixels and returning
class probabilities, its input size, the label of each output and the layer for heatmaps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend
from kerascope.errors import KerascopeError
from kerascope.rundir import read_labels
from kerascope.zoo import registry
from kerascope.zoo.fast_init import numpy_init
from kerascope.zoo.registry import InputConvention, ModelSpec

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
    # How pictures are fitted to input_size for classification: the weights' own convention
    # for zoo models, squash for trained ones (their training pipeline squashes).
    convention: InputConvention = field(default_factory=InputConvention)
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

    Extra keyword arguments go to the builder, as for ``keras.applications``
    (``include_top=False, pooling="avg"`` for a backbone, ``input_shape=...``,
    ``input_tensor=...``). Every family takes the same path: the spec's preprocessing is
    applied to the input (a new ``keras.Input`` named ``image``, or the given
    ``input_tensor``), then the builder runs on the result; with an ``input_tensor`` the
    model's input is that tensor's source input, as in Keras.

    Example:
        >>> inputs = keras.Input(shape=(224, 224, 3))
        >>> base = build("inception_v3", input_tensor=inputs, include_top=False)
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
            include_top = builder_kwargs.get("include_top", True)
            path = weights_mod.resolve(spec, explicit, include_top=include_top)
    kwargs = {**spec.builder_kwargs, **builder_kwargs}
    builder = spec.builder_fn()
    # Weights about to be loaded: draw the throwaway initial values with NumPy (on JAX, Keras
    # would compile an initializer for every weight shape, most of a cold start).
    with numpy_init(enabled=path is not None):
        inputs = kwargs.pop("input_tensor", None)
        size = kwargs.pop("input_shape", None) or (spec.input_size, spec.input_size, 3)
        if inputs is None:
            inputs = keras.Input(shape=size, name="image")
        elif not keras.backend.is_keras_tensor(inputs):
            raise TypeError(
                f"input_tensor must be a Keras tensor (keras.Input(...) or a layer's output), "
                f"got {type(inputs).__name__}"
            )
        x = ImagePreprocess(spec.preprocess, name="preprocess")(inputs)
        model = builder(input_tensor=x, weights=None, **kwargs)
    if isinstance(model.input, list) and len(model.inputs) == 1:
        # Keras applications keep get_source_inputs()'s one-item list, so every call on a
        # plain tensor warns that the input structure does not match; same layers, one input.
        model = keras.Model(model.inputs[0], model.output, name=model.name)
    if path is not None:
        _load_weights(model, spec, Path(path))
    return model


def _load_weights(model, spec: ModelSpec, path: Path) -> None:
    """Load ``path`` into ``model``; a damaged file or another model's is one clear line.

    Keras reports those as an h5py traceback, a 69-object shape dump, or (a file holding fewer
    layers) only warnings while leaving those layers random; all of them are refused here.
    """
    import warnings

    from kerascope.zoo.weights import WeightsError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if spec.family == "efficientnet_lite" or str(path).endswith(".weights.h5"):
                model.load_weights(str(path))
            else:
                _load_keras_app_weights(model, path, spec.name)
        except WeightsError as exc:
            raise WeightsError(f"cannot load weights '{path}' into '{spec.name}': {exc}") from None
        except Exception as exc:
            raise WeightsError(f"cannot load weights '{path}' into '{spec.name}': "
                               f"{weights_mismatch(exc)}") from None  # fmt: skip
    skipped = [w for w in caught if "Skipping" in str(w.message) or "not loaded" in str(w.message)]
    if skipped:
        raise WeightsError(
            f"cannot load weights '{path}' into '{spec.name}': the file has no weights for "
            f"{len(skipped)} of its layer groups (is it another model's?)"
        )
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def weights_mismatch(exc: BaseException) -> str:
    """What is wrong with a weights file, from the error Keras or h5py raised on loading it."""
    import re

    text = str(exc)
    if m := re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text):
        return f"the file is truncated ({int(m[1]):,} of {int(m[2]):,} bytes)"
    if "file signature not found" in text:
        return "not a Keras weights file (HDF5 signature missing: empty, damaged or another format)"
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    # Keras's legacy .h5 loader says it its own way (files of keras.applications).
    shapes = shapes or re.search(r"expects shape (\([^)]*\))\. Received .*shape (\([^)]*\))", text)
    layer = re.search(r"name=([\w/.-]+)", text) or re.search(r"\(named ([\w/.-]+)\)", text)
    if shapes:
        where = f"layer '{layer[1]}' " if layer else ""
        return (f"{where}expects shape {shapes[1]} but the file holds {shapes[2]}: the file "
                "belongs to another model (pass that model with --model)")  # fmt: skip
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{first} (is it a weights file of this model?)"


def _load_keras_app_weights(model, path: Path, name: str = "") -> None:
    """Load a Keras applications legacy ``.h5`` file, matching its layers to ours in order.

    In order, as Keras does, not by name: Keras's own files hold auto-generated layer names
    (InceptionV3's ``conv2d_57``) that a model built in another session does not share. A
    with-top file also loads into a model built without top (the backbone's layers come
    first in both; the classifier's are left out, said in a note). A file without classifier
    for a model with one is refused: its classifier would stay random.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format as legacy

    from kerascope.zoo.weights import WeightsError

    def _legacy_order(layer) -> list:  # the order legacy files hold a layer's variables in
        return layer.trainable_weights + layer.non_trainable_weights

    layers = [layer for layer in model.layers if layer.weights]
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        saved = []  # (name, shapes) of the file's layers that hold weights, in order
        for layer_name in legacy.load_attributes_from_hdf5_group(group, "layer_names"):
            weight_names = legacy.load_attributes_from_hdf5_group(group[layer_name], "weight_names")
            if weight_names:
                shapes = [tuple(group[layer_name][w].shape) for w in weight_names]
                saved.append((layer_name, shapes))
        if len(saved) == len(layers):
            legacy.load_weights_from_hdf5_group(group, model)  # Keras's own loader
            return
        ours = [[tuple(w.shape) for w in _legacy_order(layer)] for layer in layers]
        common = min(len(saved), len(ours))
        same_backbone = [shapes for _, shapes in saved[:common]] == ours[:common]
        if not same_backbone:
            raise WeightsError(f"the file holds weights for {len(saved)} layers, the model has "
                               f"{len(ours)} (is it another model's?)")  # fmt: skip
        if len(saved) < len(layers):
            missing = ", ".join(layer.name for layer in layers[len(saved) :])
            raise WeightsError(
                f"the file has no classifier (it is a without-top file, like Keras's "
                f"*_notop.h5; missing: {missing}): build the model without top, or pass the "
                "with-top file"
            )
        for (layer_name, _), layer in zip(saved, layers, strict=False):
            values = legacy.load_subset_weights_from_hdf5_group(group[layer_name])
            for variable, value in zip(_legacy_order(layer), values, strict=True):
                variable.assign(value)
    from kerascope.output import note

    left_out = ", ".join(layer_name for layer_name, _ in saved[len(layers) :])
    note(f"'{path}' holds the model with its classifier; '{name or model.name}' is built "
         f"without top, so the classifier's layers ({left_out}) were left out")  # fmt: skip


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
        convention=spec.weights.convention,
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
    names = read_labels(run_dir)  # a damaged labels.json is one line, not a traceback
    if names is not None:
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
