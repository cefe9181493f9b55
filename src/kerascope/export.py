"""`kerascope export`: a zoo model or a trained run as one file that runs without kerascope.

Two targets. ONNX: the graph kerascope's CPU engine already runs (``onnx_export``), with the
preprocessing inside, uint8 or float32 RGB input, a dynamic batch dimension, and the labels and
input size in ``metadata_props`` (``onnx_export.package``). ``.keras``: the Keras model with
kerascope's one custom layer (``ImagePreprocess``) replaced by standard Keras layers that compute
the same thing, so plain ``keras.saving.load_model`` opens it; the labels, input convention,
heatmap layer and a multi-label run's thresholds go into the archive's ``metadata.json``, which
Keras ignores (`kerascope.zoo.model_archive.write_record`), so kerascope reads them back.

Nothing is written unless the file has been checked first: ``onnx.checker`` and onnxruntime
(batch of several and batch of one) or a reload through ``keras.saving.load_model``, against the
Keras model on real photos (max |delta probability| <= ``TOLERANCE``). The file then appears
atomically (``kerascope.files``), so a failed export never leaves half a file or replaces a
good one. An existing output is replaced only with ``overwrite`` (explain's rule), a file the
export reads never.

Example:
    >>> from kerascope.export import export_model
    >>> export_model("efficientnet_lite0", "lite0.onnx").max_abs_diff  # doctest: +SKIP
    3.2e-07
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascope import files, interrupts
from kerascope.errors import KerascopeError
from kerascope.export_target import (  # ExportError: callers import it from here
    ExportError,
    check_not_replacing,
    check_output,
    inputs,
    named_as,
)

FORMATS = {".onnx": "onnx", ".keras": "keras"}
INPUT_TYPES = {"uint8": "uint8", "float": "float32", "float32": "float32"}
TOLERANCE = 1e-4  # max |delta probability| against the Keras model on the check images
CHECK_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")  # skimage/data


@dataclass
class ExportResult:
    """What was written and how it was checked."""

    path: Path
    format: str  # "onnx" or "keras"
    model: str
    input_size: tuple[int, int]  # (height, width)
    input_type: str | None  # "uint8" or "float32" for ONNX; None for .keras (any dtype)
    classes: int
    max_abs_diff: float  # max |delta probability| against the Keras model
    checked_on: list[str]  # the images compared on
    precision: str = "float32"  # "int8": a calibrated int8 graph (`kerascope.quantize`)
    int8: Any = None  # the int8 graph's `kerascope.quantize.Int8Graph` (its measured agreement)


def output_format(output: str | os.PathLike, format: str | None = None) -> str:
    """``"onnx"`` or ``"keras"``: ``format`` if given, else from the output's extension."""
    suffix = Path(output).suffix.lower()
    if format is None:
        if suffix not in FORMATS:
            raise ExportError(
                f"cannot tell the format of '{output}': name it .onnx or .keras, "
                "or give --format onnx|keras"
            )
        return FORMATS[suffix]
    if format not in FORMATS.values():
        raise ExportError(f"unknown export format '{format}' (onnx or keras)")
    if format == "keras" and suffix != ".keras":
        raise ExportError(f"a Keras model file must end in .keras, not '{output}'")
    if format == "onnx" and suffix == ".keras":
        raise ExportError(f"an ONNX model file named .keras would be read as a Keras one: name "
                          f"it .onnx, not '{output}'")  # fmt: skip
    return format


def check_images(
    size: tuple[int, int], paths: Sequence[str | os.PathLike] | None = None
) -> tuple[np.ndarray, list[str]]:
    """The uint8 batch an export is checked on, resized as kerascope resizes, and its names.

    ``paths`` if given; else scikit-image's sample photos when it is installed; else four
    generated pictures (smooth colours plus texture), so an export is always checked.
    """
    from kerascope.images import load_image, resize

    if not paths:
        paths = _sample_photos()
    if paths:
        return (
            np.stack([resize(load_image(p), size) for p in paths]),
            [os.path.basename(os.fspath(p)) for p in paths],
        )
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w, 1)
    images = []
    for i in range(4):
        colour = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), np.sin(xx * yy * 5 + i)], -1)
        noise = rng.normal(0.0, 0.15, (h, w, 3))
        images.append(np.clip((colour * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8))
    return np.stack(images), [f"generated-{i + 1}" for i in range(4)]


def _sample_photos() -> list[Path]:
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    return [folder / n for n in CHECK_PHOTOS if (folder / n).is_file()]


def _keras_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    """The reference: the Keras model itself (never the onnx engine, which is under test)."""
    from kerascope.inference import compiled

    return np.asarray(compiled(model, "keras")(images), np.float64)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _worst(got: np.ndarray, expected: np.ndarray, names: list[str]) -> tuple[float, str]:
    per_image = np.abs(np.asarray(got, np.float64) - expected).reshape(len(names), -1).max(1)
    i = int(np.argmax(per_image))
    return float(per_image[i]), names[i]


def export_model(
    model: Any,
    output: str | os.PathLike,
    format: str | None = None,
    input_type: str = "uint8",
    check: Sequence[str | os.PathLike] | None = None,
    weights: str | os.PathLike | None = None,
    precision: str = "float32",
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` as a standalone ONNX or ``.keras`` file, after checking it against Keras.

    Args:
        model: zoo name, run directory, ``.keras`` file, or a loaded ``Classifier``.
        output: the file to write (its folder is created, and checked writable before any
            work); ``.onnx`` or ``.keras``.
        format: ``"onnx"`` or ``"keras"``; default from ``output``'s extension.
        input_type: ONNX input, ``"uint8"`` (default) or ``"float"``: RGB 0..255 either way.
        check: images to check the export on (default: scikit-image's sample photos).
        weights: explicit weights file for a zoo model.
        precision: ``"float32"`` (default) or ``"int8"``: the calibrated int8 graph
            (`kerascope.quantize`, ONNX only), written whatever its agreement; its measured
            agreement with float32 and its calibration are in ``metadata_props``
            (``kerascope_int8``), and it is checked against that graph instead of Keras.
        overwrite: replace an existing ``output`` (explain's rule: never without it, and
            never a file the export reads, even with it).

    Raises:
        ExportError: unknown format, an existing output without ``overwrite`` or one that is
            an input, a layer the target cannot express (named with its class), or an export
            that disagrees with Keras; nothing is written then.
    """
    from kerascope.zoo.models import Classifier, load_model

    fmt = output_format(output, format)
    if precision not in ("float32", "int8"):
        raise ExportError(f"unknown export precision '{precision}' (float32 or int8)")
    if precision == "int8" and fmt != "onnx":
        raise ExportError("--precision int8 writes ONNX only: name the output .onnx")
    if input_type not in INPUT_TYPES:
        raise ExportError(f"unknown input type '{input_type}' (uint8 or float)")
    if check:  # folders and globs too, as every command takes images (a folder was refused)
        from kerascope.images import expand_inputs

        check = expand_inputs(check).paths or list(check)
    made = check_output(output)  # a folder it can write in, probed: one line before any work
    try:
        check_not_replacing(output, inputs(model, weights, check), overwrite)
        clf = model if isinstance(model, Classifier) else load_model(model, weights=weights)
        return _export(clf, Path(output), fmt, input_type, check, precision, overwrite)
    except BaseException:
        files.remove_empty(made)  # the folders made for it, where nothing was written
        raise


def _export(clf, path: Path, fmt: str, input_type: str, check, precision: str,
            overwrite: bool) -> ExportResult:  # fmt: skip
    """`export_model` once its output was checked and its model loaded."""
    _check_interface(clf)
    # Without overwrite, the output was checked free before the work: written beside it and
    # given its name only while still free (`files.place_new`), never over a file made meanwhile.
    target = files.output_target(path)  # a link's target is the file written (its name stays)
    written = path if overwrite or target.stream else files.temp_name(target.path)
    try:
        images, names = check_images(clf.input_size, check)
        expected = _keras_probabilities(clf.model, images)
        interrupts.check()  # (a Ctrl-C Python swallowed in a finalizer: `kerascope.interrupts`)
        int8: tuple = ()
        with named_as(path, written):  # a failed write of the temp is a failed write of -o
            if precision == "int8":
                kind = INPUT_TYPES[input_type]
                diff, graph = _write_int8(clf, written, kind, images, expected, names)
                int8 = ("int8", graph)
            elif fmt == "onnx":
                kind = INPUT_TYPES[input_type]
                diff = _write_onnx(clf, written, kind, images, expected, names)
            else:
                kind = None
                diff = _write_keras(clf, written, images, expected, names)
    except MemoryError:  # a one-line error like any other, never a traceback
        h, w = clf.input_size
        raise ExportError(
            f"ran out of memory exporting '{clf.name}' ({h}x{w} input); nothing written: "
            "free memory, or export a model with a smaller input"
        ) from None
    if written != path:
        with named_as(path, written):
            files.place_new(written, target.path)
    return ExportResult(path, fmt, clf.name, clf.input_size, kind, clf.num_classes, diff, names,
                        *int8)  # fmt: skip


def _check_interface(clf: Any) -> None:
    """One (N, H, W, 3) image input and one (N, classes) output, as every kerascope job needs."""
    try:
        inputs, outputs = list(clf.model.inputs or []), list(clf.model.outputs or [])
    except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
        inputs, outputs = [], []
    shapes = [tuple(t.shape) for t in inputs], [tuple(t.shape) for t in outputs]
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or len(shapes[0][0]) != 4
        or shapes[0][0][-1] != 3
        or shapes[1][0][1:] != (clf.num_classes,)
    ):
        raise ExportError(
            f"cannot export '{clf.name}': an image classifier takes one (N, H, W, 3) input and "
            f"gives one (N, classes) output; this model maps {shapes[0]} to {shapes[1]}"
        )


def _write_onnx(clf, path: Path, input_type: str, images, expected, names) -> float:
    """Convert, package, check with onnx.checker and onnxruntime, then write atomically."""
    import onnx
    import onnxruntime as ort

    from kerascope import __version__
    from kerascope.onnx_export import export as convert
    from kerascope.onnx_export import package
    from kerascope.onnx_export.graph import UnsupportedLayerError

    try:
        raw = convert.keras_to_onnx(clf.model)
    except UnsupportedLayerError as exc:
        raise ExportError(f"{exc}; nothing written (a .keras export keeps every layer)") from None
    interrupts.check()  # a Ctrl-C swallowed while converting: stop before anything is written
    try:
        proto = package.package(
            raw, input_type, clf.labels, clf.input_size, convention=clf.convention
        )
    except package.InterfaceError as exc:
        raise ExportError(f"cannot export '{clf.name}' to ONNX: {exc}") from None
    try:
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001  (onnx and onnxruntime raise their own types)
        first = _first_line(exc)
        raise ExportError(
            f"the ONNX graph of '{clf.name}' is invalid: {first}; nothing written"
        ) from None
    feed = images if input_type == "uint8" else images.astype(np.float32)
    (batch,) = session.run(None, {package.INPUT_NAME: feed})
    (one,) = session.run(None, {package.INPUT_NAME: feed[:1]})  # the batch dimension is dynamic
    diff, worst = _worst(batch, expected, names)
    diff = max(diff, _worst(one, expected[:1], names[:1])[0])
    if not diff <= TOLERANCE:
        raise ExportError(
            f"the ONNX graph of '{clf.name}' differs from Keras by {diff:.2g} in probability on "
            f"'{worst}' (limit {TOLERANCE:g}); nothing written (a .keras export is exact)"
        )
    onnx.helper.set_model_props(
        proto,
        {
            **{p.key: p.value for p in proto.metadata_props},
            "model": clf.name,
            "producer": f"kerascope {__version__}",
            "checked": json.dumps({"images": names, "max_abs_diff_vs_keras": diff}),
        },
    )
    files.write_bytes(path, proto.SerializeToString())
    return diff


def _write_int8(clf, path: Path, input_type: str, images, expected, names) -> tuple[float, Any]:
    """The calibrated int8 graph, packaged like a float32 export, checked against that graph
    (same numbers through the packaging) rather than Keras, and written with its record."""
    import onnx
    import onnxruntime as ort

    from kerascope import __version__, quantize
    from kerascope.onnx_export import package

    if not quantize.photo_files():
        raise ExportError("an int8 export calibrates on real photos: install scikit-image")
    graph = quantize.int8_graph(clf.model)
    record = {p.key: p.value for p in onnx.load_from_string(graph.payload).metadata_props}
    try:
        proto = package.package(graph.payload, input_type, clf.labels, clf.input_size,
                                metadata={quantize.META_KEY: record[quantize.META_KEY]},
                                convention=clf.convention)  # fmt: skip
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])  # fmt: skip
    except Exception as exc:  # noqa: BLE001  (onnx and onnxruntime raise their own types)
        raise ExportError(
            f"the int8 ONNX graph of '{clf.name}' is invalid: {_first_line(exc)}; nothing written"
        ) from None
    feed = images if input_type == "uint8" else images.astype(np.float32)
    (got,) = session.run(None, {package.INPUT_NAME: feed})
    direct = quantize.probabilities(graph.payload, images)
    same, worst = _worst(got, direct, names)
    if not same <= TOLERANCE:
        raise ExportError(
            f"the packaged int8 graph of '{clf.name}' differs from the int8 graph it packages by "
            f"{same:.2g} on '{worst}' (limit {TOLERANCE:g}); nothing written"
        )
    diff = _worst(got, expected, names)[0]
    props = {p.key: p.value for p in proto.metadata_props}
    checked = {"images": names, "max_abs_diff_vs_keras": diff, "max_abs_diff_vs_int8_graph": same}
    onnx.helper.set_model_props(proto, {**props, "model": clf.name, "precision": "int8",
                                        "producer": f"kerascope {__version__}",
                                        "checked": json.dumps(checked)})  # fmt: skip
    files.write_bytes(path, proto.SerializeToString())
    return diff, graph


# --- .keras -------------------------------------------------------------------------------


def _layers(model: Any) -> Iterator[Any]:
    """Every layer of ``model``, nested models included (and yielded themselves)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def _standard_preprocess(layer: Any) -> Any:
    """Standard Keras layer(s) computing what an ``ImagePreprocess`` computes, same name.

    caffe (RGB->BGR, minus the mean): a frozen 1x1 convolution whose kernel is the channel
    permutation and whose bias is minus the mean; exact on pixel values (products by 0 and 1).
    """
    import keras

    from kerascope.zoo import preprocess

    kwargs = {"name": layer.name, "dtype": layer.dtype_policy.name}
    if layer.mode == "none":
        return keras.layers.Identity(**kwargs)
    bgr, scale, offset = preprocess.affine(layer.mode)
    if bgr:
        conv = keras.layers.Conv2D(3, 1, trainable=False, **kwargs)
        conv.build((None, None, None, 3))
        flip = (np.eye(3, dtype=np.float32)[::-1] * scale.astype(np.float32)).reshape(1, 1, 3, 3)
        conv.set_weights([flip, offset.astype(np.float32)])
        return conv
    one = lambda v: float(v[0]) if np.all(v == v[0]) else v.tolist()  # noqa: E731
    return keras.layers.Rescaling(one(scale), offset=one(offset), **kwargs)


def portable_model(model: Any) -> Any:
    """``model`` with every ``ImagePreprocess`` (nested models too) replaced by standard layers.

    The other layers are shared, not copied; a model without one is returned as it is.
    """
    import keras

    from kerascope.zoo.preprocess import ImagePreprocess

    def custom(m: Any) -> bool:
        return any(isinstance(x, ImagePreprocess) for x in _layers(m))

    def clone(layer: Any) -> Any:
        if isinstance(layer, ImagePreprocess):
            return _standard_preprocess(layer)
        return portable_model(layer) if getattr(layer, "layers", None) else layer

    if not custom(model):
        return model
    return keras.models.clone_model(model, clone_function=clone)


def _foreign(config: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(layer name, class)`` of every object in a saved config that plain Keras cannot build."""
    if isinstance(config, dict):
        module, name = config.get("module"), config.get("class_name")
        inner = config.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            where = inner["name"]
        standard = module is None or module in ("keras", "builtins") or module.startswith("keras.")
        if (name is not None and not standard) or "kerascope" in str(config.get("registered_name")):
            yield where, str(name)
        for value in config.values():
            yield from _foreign(value, where)
    elif isinstance(config, list):
        for value in config:
            yield from _foreign(value, where)


def _write_keras(clf, path: Path, images, expected, names) -> float:
    """Save the portable model, prove plain Keras rebuilds it, then move it into place."""
    import keras

    from kerascope.zoo.fast_init import numpy_init
    from kerascope.zoo.model_archive import model_record, write_record

    model = portable_model(clf.model)
    for layer in _layers(model):
        if not type(layer).__module__.startswith("keras."):
            raise ExportError(
                f"cannot export layer '{layer.name}' ({type(layer).__name__}) to a plain .keras "
                "file: it is not a Keras layer, so keras.saving.load_model could not rebuild it"
            )
    with files.atomic_path(path, suffix=".keras") as tmp:
        try:
            model.save(tmp)
        except (OSError, KerascopeError):
            raise
        except Exception as exc:  # noqa: BLE001  (a layer Keras cannot serialize)
            first = _first_line(exc)
            raise ExportError(f"cannot save '{clf.name}' as a .keras file: {first}") from None
        write_record(tmp, model_record(clf.labels, clf.convention, clf.cam_layer,
                                       clf.extra.get("multilabel"), clf.name))  # fmt: skip
        with zipfile.ZipFile(tmp) as archive:
            config = json.loads(archive.read("config.json"))
        for layer, name in _foreign(config):
            raise ExportError(
                f"cannot export '{clf.name}' to a plain .keras file: layer '{layer}' uses "
                f"{name}, which plain Keras does not know"
            )
        try:
            with numpy_init():  # every weight is then read from the file
                loaded = keras.saving.load_model(tmp, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001  (Keras raises many types for a bad config)
            first = _first_line(exc)
            raise ExportError(f"plain Keras cannot reload '{clf.name}': {first}") from None
        diff, worst = _worst(_keras_probabilities(loaded, images), expected, names)
        interrupts.check()  # before the temp file becomes the export
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the reloaded .keras model of '{clf.name}' differs by {diff:.2g} in probability "
                f"on '{worst}' (limit {TOLERANCE:g}); nothing written"
            )
    return diff
