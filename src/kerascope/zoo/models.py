"""Build zoo models and load saved ones into one shape: a `Classifier`.

A `Classifier` is what every job needs: a Keras model taking RGB 0..255 pixels and returning
class probabilities, its input size, the label of each output and the layer for heatmaps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend
from kerascope.keras_saving import fast_keras_saving
from kerascope.rundir import missing_model, read_labels
from kerascope.zoo import registry
from kerascope.zoo.fast_init import numpy_init
from kerascope.zoo.model_archive import (  # noqa: F401  (ModelFileError: callers import it from here)
    ModelFileError,
    check_input_size,
    check_model_archive,
    read_record,
)
from kerascope.zoo.registry import InputConvention, ModelSpec

# What happened that the caller may want to say (the command prints it; DESIGN.md).
_log = logging.getLogger(__name__)

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
        _load_weights(model, spec, Path(path), kwargs.get("include_top", True))
    return model


class _OtherLayers(RuntimeError):
    """A legacy file whose layers are not the model's (`_load_keras_app_weights`)."""


class _NoClassifier(RuntimeError):
    """A without-top file for a model with its classifier; the message names what is missing."""


def _load_weights(model, spec: ModelSpec, path: Path, include_top: bool = True) -> None:
    """Load ``path`` into ``model``; a damaged file or another model's is one clear line.

    Keras reports those as an h5py traceback, a 69-object shape dump, or (a file holding fewer
    layers) only warnings while leaving those layers random; all of them are refused here.
    A cached file that is not the model's says whose it is (its layers counted) and what to do.
    """
    import warnings

    from kerascope.zoo import weights as cache
    from kerascope.zoo.weights import WeightsError

    fast_keras_saving()
    cached = cache.is_cached_path(spec, path, include_top)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if spec.family == "efficientnet_lite" or str(path).endswith(".weights.h5"):
                model.load_weights(str(path))
            else:
                _load_keras_app_weights(model, path, spec.name)
        except _OtherLayers as exc:
            held = cache.layout_held(spec, path, include_top)
            what = f"it holds {held}" if held else f"{exc}: it is another model's file"
            if cached:
                raise WeightsError(cache.not_its_own(spec, path, include_top, what)) from None
            raise WeightsError(f"cannot load weights '{path}' into '{spec.name}': {what} (pass "
                               f"the weights of '{spec.name}', or use the model the file holds "
                               "with --model)") from None  # fmt: skip
        except _NoClassifier as exc:
            if cached:
                raise WeightsError(f"cached weights '{path}' for '{spec.name}' cannot serve "
                                   f"it: {exc}; "
                                   f"{cache.put_there(spec, include_top)}") from None  # fmt: skip
            raise WeightsError(
                f"cannot load weights '{path}' into '{spec.name}': {exc}: build the model "
                "without top, or pass the with-top file"
            ) from None
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
    if m := re.search(r"A total of (\d+) objects could not be loaded", text):
        # Keras 3's own words, its "Example error message" empty: say what it means
        return (f"{int(m[1]):,} of this model's layers found no weights in the file: it holds "
                "another model's weights (pass that model with --model)")  # fmt: skip
    if isinstance(exc, PermissionError) or "errno = 13" in text:
        return "permission denied (make the file readable)"
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
            raise _OtherLayers(f"the file holds weights for {len(saved)} layers, the model has "
                               f"{len(ours)}")  # fmt: skip
        if len(saved) < len(layers):
            missing = ", ".join(layer.name for layer in layers[len(saved) :])
            raise _NoClassifier(f"the file has no classifier (a without-top file, like Keras's "
                                f"*_notop.h5; missing: {missing})")  # fmt: skip
        for (layer_name, _), layer in zip(saved, layers, strict=False):
            values = legacy.load_subset_weights_from_hdf5_group(group[layer_name])
            for variable, value in zip(_legacy_order(layer), values, strict=True):
                variable.assign(value)
    left_out = ", ".join(layer_name for layer_name, _ in saved[len(layers) :])
    _log.warning(
        "'%s' holds the model with its classifier; '%s' is built without top, so the "
        "classifier's layers (%s) were left out",
        path,
        name or model.name,
        left_out,
    )


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL, weights=None, precision: str | None = None
) -> Classifier:
    """Load a zoo model by name, or a ``.keras`` file saved by kerascope or plain Keras.

    ``precision`` (auto, float32, bfloat16, float16, int8; checked here) is what jobs on this
    classifier compute in unless they are given one (``Classifier.extra["precision"]``; see
    `kerascope.classification.run_precision`); the weights stay float32 either way.

    Example:
        >>> clf = load_model("efficientnet_lite0")
        >>> clf.input_size
        (224, 224)
    """
    if precision is not None:
        from kerascope.precision import INFERENCE_PRECISIONS, check_precision

        # A bad name is one line before a slow load. int8 too: classify/serve run it (it is
        # refused there, with numbers, where the model's int8 graph missed the bound).
        checked = check_precision(precision, INFERENCE_PRECISIONS)
        clf = load_model(name_or_path, weights)
        clf.extra["precision"] = checked
        return clf
    text = str(name_or_path)
    if weights is not None and not str(weights).strip():  # fell back to the cache in silence
        raise ModelFileError("--weights (weights=) is empty: give a weights file, or leave it out")
    if names_a_file(name_or_path):
        if weights is not None:  # before: ignored, the file's own weights ran
            raise ModelFileError(f"--weights (weights=) is for zoo models; '{text}' holds its "
                                 "own weights")  # fmt: skip
        return _load_file(Path(text).expanduser())
    if os.path.lexists(text):  # a folder "efficientnet_lite0" here took the default model
        _log.warning(
            "'%s' is the zoo model; for the file or folder of that name here, write ./%s",
            text,
            text,
        )
    spec = zoo_spec(text)
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


def names_a_file(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` means a model file or run folder, not a zoo model: a zoo name
    given as a string is the zoo's even beside a file of that name (``./name`` is the file)."""
    text = str(name_or_path)
    if isinstance(name_or_path, str) and registry.known(text):
        return False
    path = Path(text).expanduser()
    return text.endswith(".keras") or path.is_dir() or path.is_file()


def run_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The run directory ``name_or_path`` means (itself, or the folder of its ``.keras`` file),
    or None for a zoo model (or a model file of another kind, such as ``.h5``)."""
    if not names_a_file(name_or_path):
        return None
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else path.parent if path.suffix == ".keras" else None


def zoo_spec(name: str) -> ModelSpec:
    """The zoo's model ``name``; a path that names no file says so (not "unknown model")."""
    if os.sep in name or (os.altsep and os.altsep in name):
        raise ModelFileError(f"no run folder or model file at '{name}' (zoo models are named "
                             "without a path: `kerascope models` lists them)")  # fmt: skip
    return registry.get(name)


def _check_interface(model: Any, path: Path) -> tuple[tuple, int]:
    """One (N, H, W, 3) input of a fixed size and one (N, classes) output, or one clear line.

    Returns the input shape and the number of classes.
    """
    what = f"cannot use model '{path}'"
    inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    if len(inputs) != 1:
        raise ModelFileError(f"{what}: it has {len(inputs)} inputs; kerascope models take one "
                             "(N, H, W, 3) image batch")  # fmt: skip
    if len(outputs) != 1:
        raise ModelFileError(
            f"{what}: it has {len(outputs)} outputs; kerascope needs one (N, classes) output "
            "(save keras.Model(model.input, model.outputs[0]) for the first)"
        )
    shape, out = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelFileError(f"{what}: it takes {shape}, not an (N, H, W, 3) RGB image batch")
    if shape[1] is None or shape[2] is None:
        raise ModelFileError(
            f"{what}: it takes images of any size {shape}; kerascope needs a fixed input "
            "size: rebuild it with one, e.g. keras.Input((224, 224, 3))"
        )
    if len(out) != 2 or not out[1]:
        raise ModelFileError(f"{what}: it gives {out}, not one (N, classes) probability row")
    check_input_size(list(shape), None, f"cannot load model '{path}'")
    return shape, int(out[1])


def _load_file(path: Path) -> Classifier:
    ensure_backend()
    import keras

    import kerascope.zoo.preprocess  # noqa: F401  (registers custom layers before loading)

    run_dir = path if path.is_dir() else path.parent
    model_path = path / "model.keras" if path.is_dir() else path
    if not model_path.is_file():
        raise ModelFileError(missing_model(model_path))
    _check_format(model_path)
    check_model_archive(model_path)  # before Keras builds anything from it
    fast_keras_saving()
    try:
        with numpy_init():  # every weight is then read from the file
            model = keras.saving.load_model(str(model_path), compile=False)
    except MemoryError:
        raise ModelFileError(f"cannot load model '{model_path}': it does not fit in memory "
                             "(free memory or use a smaller model)") from None  # fmt: skip
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot load model '{model_path}': {first}") from None
    shape, classes = _check_interface(model, model_path)
    # The run's files beside the model first (they can be edited), then the record inside the
    # archive (`kerascope export`), which a model keeps once it leaves its run folder.
    record = read_record(model_path) or {}
    labels_file = run_dir / "labels.json"
    names = read_labels(run_dir)  # a damaged labels.json is one line, not a traceback
    source = f"'{labels_file if labels_file.is_file() else run_dir / 'config.yaml'}'"
    ids = None
    if names is None and record:
        names, ids = record["classes"], record.get("class_ids")
        source = f"the kerascope record in '{model_path}' (its metadata.json)"
    from kerascope.zoo.sigmoid_heads import (
        as_probabilities,
        is_binary_sigmoid,
        read_multilabel,
        two_class_view,
    )

    model, done = as_probabilities(model)
    if done:
        _log.warning("'%s': %s", model_path, done)
    if classes == 1 and (names is None or len(names) == 2) and is_binary_sigmoid(model):
        model, classes = two_class_view(model), 2  # a binary run: read as two classes
    multilabel = read_multilabel(run_dir) or record.get("multilabel")
    if names is not None:
        labels = [(ids[i] if ids else str(i), n) for i, n in enumerate(names)]
    elif classes == 1000:
        labels = _imagenet_labels()
    else:
        labels = [(str(i), f"class_{i}") for i in range(classes)]
        _say_unnamed(model_path, classes)
    if (
        len(labels) != classes
        and names is not record.get("classes")
        and (record and len(record["classes"]) == classes)
    ):  # a stray labels.json beside it
        _log.warning("%s lists %d classes but the model outputs %d: the names recorded inside "
                     "'%s' are used", source, len(labels), classes, model_path)  # fmt: skip
        ids = record.get("class_ids")
        labels = [(ids[i] if ids else str(i), n) for i, n in enumerate(record["classes"])]
        multilabel = record.get("multilabel")
    if len(labels) != classes:
        raise ModelFileError(f"{source} lists {len(labels)} classes but the model outputs "
                             f"{classes}")  # fmt: skip
    return Classifier(
        model=model,
        name=model_path.stem if not path.is_dir() else path.name,
        input_size=(int(shape[1]), int(shape[2])),
        labels=labels,
        cam_layer=record.get("cam_layer"),
        source=str(model_path),
        convention=_convention(record.get("input_convention", {})),
        extra={"multilabel": multilabel} if multilabel else {},
    )


def _convention(fit: dict[str, Any]) -> InputConvention:
    """The record's input convention (checked by `read_record`); keys of a later version out."""
    keys = ("resize", "crop_fraction", "interpolation")
    return InputConvention(**{k: fit[k] for k in keys if k in fit})


_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # what keras.saving.load_model reads by name
_said_unnamed: set[str] = set()


def _say_unnamed(model_path: Path, classes: int) -> None:
    """Warn, once per file and process, that a model's classes have no names: its predictions
    said class_1 in silence (a model.keras copied out of its run folder)."""
    key = os.path.abspath(model_path)
    if key in _said_unnamed:
        return
    _said_unnamed.add(key)
    _log.warning(
        "no class names found for '%s' (no labels.json beside it, none inside it): classes "
        "are shown as class_0..class_%d (export its run with `kerascope export RUN -o "
        "model.keras` to keep them in the file)",
        model_path,
        classes - 1,
    )


def _check_format(path: Path) -> None:
    """A file Keras cannot load by its name is one line saying what to do, not Keras's text
    about SavedModel and TFSMLayer."""
    suffix = path.suffix.lower()
    if suffix in _KERAS_SUFFIXES:
        return
    if suffix == ".onnx":
        raise ModelFileError(
            f"'{path}' is an ONNX export: kerascope runs .keras files and run folders; run "
            "the .onnx with onnxruntime (examples/onnx_predict.py)"
        )
    import zipfile

    if zipfile.is_zipfile(path):
        raise ModelFileError(f"cannot load model '{path}': Keras reads a model archive only "
                             "under a .keras name; rename or copy it to one")  # fmt: skip
    raise ModelFileError(f"cannot load model '{path}': not a Keras model file (a .keras file, "
                         "a legacy .h5, or a run folder)")  # fmt: skip
