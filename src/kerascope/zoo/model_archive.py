"""A ``.keras`` file judged from its ``config.json`` alone, before Keras builds anything from
it: damaged archives, configs that would switch Keras's safe mode off, inputs too large to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kerascope.errors import KerascopeError


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
    import json
    import zipfile
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
