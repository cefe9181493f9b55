"""A ``.keras`` file judged from its ``config.json`` alone, before Keras builds anything from
it: damaged archives, configs that would switch Keras's safe mode off, inputs too large to run.

Also the record kerascope keeps inside the archive (`write_record`, `read_record`): the class
names and how to feed the model, so a ``.keras`` file keeps them once it leaves its run folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kerascope.errors import KerascopeError

_log = logging.getLogger(__name__)


class ModelFileError(KerascopeError, RuntimeError):
    """A model file or run directory that cannot be used; the message says why."""


# The first layer's float32 output for one image may take this much. ResNet-50 at 224x224
# needs 3.2 MB; a 16 KB .keras declaring a 200,000x200,000 input asked for ~480 GB and had
# classify and export resize pictures to that size until the kernel killed them.
MAX_FIRST_ACTIVATION = 2_000_000_000
_MAX_CONFIG_BYTES = 64 << 20  # config.json of the largest Keras application: ~0.5 MB
# Names that switch Keras's safe mode off, or its scope: no model config has a use for them.
_SAFE_MODE_TOGGLES = frozenset({"enable_unsafe_deserialization", "SafeModeScope",
                                "safe_mode_saving"})  # fmt: skip


def _size_text(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} KB"


def check_model_archive(path: Path) -> None:
    """Refuse a ``.keras`` file that is damaged, would turn off Keras's safe mode, or declares
    an input too large to run, from its ``config.json`` alone, before Keras builds anything.

    Keras says "File not found" for a truncated archive, ``'name'`` for a config with a
    safe-mode toggle in its layer list, and builds a model of any input size (the memory is
    spent later, resizing pictures to it). Other files (legacy HDF5) are left to Keras.
    """
    import zlib

    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped and path.suffix != ".keras":
        return
    what = f"cannot load model '{path}'"
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > _MAX_CONFIG_BYTES:
                size = f"{info.file_size:,}"
                raise ModelFileError(f"{what}: its config.json claims {size} bytes (Keras writes "
                                     "well under 1 MB); copy or save the model again")  # fmt: skip
            config = json.loads(archive.read(info))
    except KeyError:
        raise ModelFileError(f"{what}: the archive has no config.json (not a Keras 3 model "
                             "file; save it with model.save('model.keras'))") from None  # fmt: skip
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise ModelFileError(f"{what}: the file is truncated or corrupt ({exc}); copy or save "
                             "it again") from None  # fmt: skip
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise ModelFileError(f"{what}: its config.json is damaged ({type(exc).__name__}); "
                             "copy or save it again") from None  # fmt: skip
    if problem := _unsafe(config):
        raise ModelFileError(f"{what}: its config.json {problem}; refusing it (use a model file "
                             "from a source you trust, saved without Lambda layers)")  # fmt: skip
    for shape, first in _inputs(config):
        check_input_size(shape, first, what)


def _unsafe(config: Any, layer: str = "") -> str | None:
    """What in a saved config would run code or switch Keras's safe mode off, or None."""
    stack = [(config, layer)]
    while stack:  # iterative: a config may nest deeper than Python's recursion limit
        node, layer = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                layer = inner["name"]
            where = f" (layer '{layer}')" if layer else ""
            if node.get("class_name") == "__lambda__":
                return f"holds a Python lambda{where}, code Keras's safe mode does not run"
            stack.extend((v, layer) for v in node.values())
            stack.extend((k, layer) for k in node)
        elif isinstance(node, list):
            stack.extend((v, layer) for v in node)
        elif isinstance(node, str) and node.rsplit(".", 1)[-1] in _SAFE_MODE_TOGGLES:
            where = f" in layer '{layer}'" if layer else ""
            return f"names {node!r}{where}, which would switch Keras's safe mode off"
    return None


def _inputs(config: Any) -> list[tuple[list, dict | None]]:
    """``(batch shape, config of the layer that reads it)`` for each input of a saved model."""
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return []
    layers = [layer for layer in layers if isinstance(layer, dict)]
    found = []
    for i, layer in enumerate(layers):
        cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if layer.get("class_name") != "InputLayer":
            continue
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        name = cfg.get("name", layer.get("name"))
        readers = [x for x in layers[i + 1 :] if _reads(x.get("inbound_nodes"), name)]
        first = (readers or layers[i + 1 : i + 2] or [None])[0]  # Sequential: the next one
        found.append((shape, first.get("config") if isinstance(first, dict) else None))
    build = config.get("build_config")
    if not found and isinstance(build, dict):  # a Sequential built without an InputLayer
        first = layers[0].get("config") if layers else None
        found.append((build.get("input_shape"), first))
    return found


def _reads(nodes: Any, name: Any) -> bool:
    """Whether a layer's ``inbound_nodes`` take a tensor of the layer ``name``."""
    stack = [nodes]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            history = node.get("keras_history")
            if isinstance(history, list) and history and history[0] == name:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def check_input_size(shape: Any, first: dict | None, what: str) -> None:
    """Refuse an input whose first layer's output for one image exceeds MAX_FIRST_ACTIVATION.

    Estimated from the config: the input's float32 size, times the growth of a convolution
    reading it (its filters per input channel, over its strides).
    """
    if not isinstance(shape, list | tuple) or len(shape) < 2:
        return
    dims = [d for d in shape[1:] if isinstance(d, int) and not isinstance(d, bool)]
    if not dims or any(d < 0 for d in dims):
        return
    elements = 1
    for d in dims:
        elements *= d
    growth = 1.0
    if isinstance(first, dict) and isinstance(first.get("filters"), int) and dims[-1] > 0:
        strides = first.get("strides", 1)
        strides = strides if isinstance(strides, list | tuple) else [strides]
        step = 1
        for s in strides:
            step *= s if isinstance(s, int) and s > 0 else 1
        growth = max(1.0, first["filters"] / (dims[-1] * step))
    need = elements * 4 * growth
    if need > MAX_FIRST_ACTIVATION:
        size = "x".join(str(d) for d in shape[1:])
        raise ModelFileError(
            f"{what}: it takes {size} inputs, so its first layer alone would need "
            f"~{_size_text(need)} per image (limit {_size_text(MAX_FIRST_ACTIVATION)}); rebuild "
            "it with an input of a few hundred pixels a side, e.g. keras.Input((224, 224, 3))"
        )


# --- kerascope's record inside a .keras archive -------------------------------------------------

# Keras writes metadata.json (its version, the date) and never reads it back, so a key of ours
# there is ignored by plain Keras; an extra archive member would not be: past three members,
# Keras's loader extracts the whole archive (weights included) to a temp folder as "assets".
METADATA_NAME = "metadata.json"
RECORD_KEY = "kerascope"
RECORD_VERSION = 1
_RESIZES, _FILTERS = ("squash", "crop"), ("bilinear", "bicubic")  # `images.fit` takes these


def model_record(
    labels: Sequence[tuple[str, str]],
    convention: Any = None,
    cam_layer: str | None = None,
    multilabel: dict[str, Any] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """What loading a ``.keras`` file needs beyond Keras: ``(id, name)`` per output, how
    pictures are fitted (an ``InputConvention``; None: squash), the heatmap layer, and a
    multi-label run's labels and thresholds (its CSV and splits stay with the run)."""
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "classes": [str(name) for _, name in labels],
        "class_ids": [str(i) for i, _ in labels],
        "input_convention": {
            "resize": getattr(convention, "resize", "squash"),
            "crop_fraction": float(getattr(convention, "crop_fraction", 1.0)),
            "interpolation": getattr(convention, "interpolation", "bilinear"),
        },
    }
    if model:
        record["model"] = str(model)
    if cam_layer:
        record["cam_layer"] = str(cam_layer)
    if multilabel:
        record["multilabel"] = {
            "labels": [str(n) for n in multilabel["labels"]],
            "thresholds": [float(t) for t in multilabel["thresholds"]],
            **({"threshold_rule": multilabel["threshold_rule"]}
               if "threshold_rule" in multilabel else {}),
        }  # fmt: skip
    return record


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Put ``record`` into the ``metadata.json`` of the ``.keras`` archive at ``path``.

    The archive is rewritten beside itself and renamed over ``path`` (members copied as they
    are, in order); call it on the temp file of an atomic write, before it is moved in place.
    """
    from kerascope.files import temp_name

    path = Path(path)
    tmp = temp_name(path)
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            names = src.namelist()
            meta = _json_object(src.read(METADATA_NAME)) if METADATA_NAME in names else {}
            meta[RECORD_KEY] = record
            text = json.dumps(meta, ensure_ascii=False).encode("utf-8")
            if METADATA_NAME not in names:
                dst.writestr(METADATA_NAME, text)
            for info in src.infolist():
                if info.filename == METADATA_NAME:
                    dst.writestr(_copy_info(info), text)
                    continue
                big = info.file_size > 1 << 31  # zip64 fields, as zipfile needs to be told
                with src.open(info) as r, dst.open(_copy_info(info), "w", force_zip64=big) as w:
                    shutil.copyfileobj(r, w, 1 << 20)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_info(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    out = zipfile.ZipInfo(info.filename, info.date_time)
    out.compress_type, out.external_attr = info.compress_type, info.external_attr
    out.file_size = info.file_size  # zipfile picks zip64 from it
    return out


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """kerascope's record in the ``.keras`` archive at ``path`` (`model_record`), or None.

    None too for a damaged record, after a warning: the model still runs, only what the
    record said is unknown (a damaged run file is refused instead: the run can be restored).
    """
    try:
        if not zipfile.is_zipfile(path):
            return None  # a legacy .h5 (or not a model): nothing of kerascope's inside
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(METADATA_NAME)
            if info.file_size > _MAX_CONFIG_BYTES:
                raise ValueError(f"{info.file_size:,} bytes")
            meta = json.loads(archive.read(info))
    except KeyError:
        return None  # not saved by Keras 3's model.save (or a stripped copy)
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as exc:
        _log.warning("'%s': cannot read its metadata.json (%s)", path, exc)
        return None
    except (ValueError, RecursionError) as exc:
        _log.warning("'%s': its metadata.json is damaged (%s); kerascope's record in it is "
                     "ignored", path, type(exc).__name__)  # fmt: skip
        return None
    record = meta.get(RECORD_KEY) if isinstance(meta, dict) else None
    if record is None:
        return None
    problem = _record_problem(record)
    if problem:
        _log.warning("'%s': kerascope's record in its metadata.json is damaged (%s); it is "
                     "ignored", path, problem)  # fmt: skip
        return None
    return record


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _record_problem(record: Any) -> str | None:
    """What is wrong with a record read back, or None (it is then safe to use as it is)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    classes, ids = record.get("classes"), record.get("class_ids")
    if not _strings(classes):
        return "its 'classes' is not a list of names"
    if ids is not None and not (_strings(ids) and len(ids) == len(classes)):
        return "its 'class_ids' do not match its classes"
    fit = record.get("input_convention", {})
    if not isinstance(fit, dict) or fit.get("resize", "squash") not in _RESIZES:
        return "its 'input_convention' is not squash or crop"
    if fit.get("interpolation", "bilinear") not in _FILTERS:
        return f"its interpolation is not {' or '.join(_FILTERS)}"
    fraction = fit.get("crop_fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        return "its crop_fraction is not in (0, 1]"
    if not isinstance(record.get("cam_layer", ""), str):
        return "its 'cam_layer' is not a layer name"
    multilabel = record.get("multilabel")
    if multilabel is not None:
        try:
            thresholds = multilabel["thresholds"]
            ok = (_strings(multilabel["labels"]) and len(multilabel["labels"]) == len(classes)
                  and isinstance(thresholds, list) and len(thresholds) == len(classes)
                  and all(isinstance(t, int | float) and not isinstance(t, bool)
                          and 0 <= t <= 1 for t in thresholds))  # fmt: skip
        except (TypeError, KeyError):
            ok = False
        if not ok:
            return "its 'multilabel' does not list one threshold in [0, 1] per label"
    return None
