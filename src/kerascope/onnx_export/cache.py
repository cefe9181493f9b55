"""Converted ONNX graphs on disk, so a new process does not convert the same model again.

Every command rebuilds its model and used to re-convert it; the key of a converted graph is a
SHA-256 over the converter version, the Keras version, the model's config (its structure) and
the bytes of every weight, so any change of code, structure or weights is a new file. Keying is
cheaper than converting (:func:`model_key`); a new process running EfficientNet-Lite0 on the onnx
engine gets its session in 0.6 s from the cache instead of 1.3 s (benchmarks/onnx_cache.py).

Files are ``<cache_dir>/onnx/<key>.onnx``: a short header with the SHA-256 of the payload, then
the serialized ``ModelProto``. They are written atomically (temporary file in the same folder,
fsync, ``os.replace``); a file that is unreadable, truncated or fails its checksum is ignored
and replaced by a fresh conversion. Nothing here ever fails a forward pass: without a writable
cache folder the graph is simply converted in memory. The folder is kept under ``MAX_BYTES``
by removing the least recently used graphs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_MAGIC = b"kerascope-onnx 1\n"
_DIGEST = 32  # bytes of SHA-256
MAX_BYTES = 2 << 30  # least recently used files beyond this total are removed after a write


def folder() -> Path:
    """Where converted graphs live: ``kerascope.config.cache_dir() / "onnx"``."""
    from kerascope.config import cache_dir

    return cache_dir() / "onnx"


def model_key(model: Any, opset: int = 17) -> str | None:
    """SHA-256 hex of (converter version, Keras version, opset, config, weights); None if the
    model has no serializable config (it is then converted every time).

    Measured on the 2-core development machine (benchmarks/onnx_cache.py), EfficientNet-Lite0:
    the key takes 0.11 s (``get_config`` 0.07 s, 18.8 MB of weights to NumPy and SHA-256 0.06 s);
    converting takes 0.46 s the first time in a process, 0.2 s after that.
    """
    import keras
    import numpy as np

    from kerascope.onnx_export.export import CONVERTER_VERSION

    try:
        config = json.dumps(model.get_config(), sort_keys=True, default=repr)
    except Exception:  # noqa: BLE001  (a custom layer without get_config: no disk cache)
        return None
    digest = hashlib.sha256()
    header = [CONVERTER_VERSION, keras.__version__, opset, type(model).__name__, config]
    digest.update(json.dumps(header).encode())
    seen: set[int] = set()
    for v in model.weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        array = np.ascontiguousarray(keras.ops.convert_to_numpy(v))
        digest.update(f"{v.path}|{array.dtype.str}|{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def read_payload(path: Path) -> bytes | None:
    """The payload of a cache file, or None if it is missing, truncated or corrupted (public:
    `kerascope.quantize` keeps its int8 graphs in this folder, in this format)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    start = len(_MAGIC) + _DIGEST
    if not data.startswith(_MAGIC) or len(data) <= start:
        return None
    payload = data[start:]
    if hashlib.sha256(payload).digest() != data[len(_MAGIC) : start]:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: pruned last
    return payload


def _prune(keep: Path) -> None:
    """Remove the least recently used graphs until the folder holds at most ``MAX_BYTES``."""
    try:
        files = [(p.stat(), p) for p in keep.parent.glob("*.onnx")]
    except OSError:
        return
    total = sum(st.st_size for st, _ in files)
    for st, p in sorted(files, key=lambda f: f[0].st_mtime_ns):
        if total <= MAX_BYTES:
            break
        if p != keep:
            with contextlib.suppress(OSError):
                p.unlink()
                total -= st.st_size


def write_payload(path: Path, payload: bytes) -> None:
    """Atomically store ``payload``; a cache that cannot be written is silently skipped."""
    from kerascope import files

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes(path, _MAGIC + hashlib.sha256(payload).digest() + payload)
        _prune(path)
    except OSError:  # files.OutputError included: the cache is an optimisation, never a failure
        pass


def onnx_bytes(model: Any, opset: int = 17, refresh: bool = False) -> bytes:
    """The serialized ONNX graph of ``model``: from the disk cache, else converted and stored.

    Args:
        model: a Keras model :func:`kerascope.onnx_export.supports`.
        opset: ONNX opset passed to the converter (part of the key).
        refresh: convert again and overwrite the cached file (e.g. onnxruntime rejected it).
    """
    from kerascope.onnx_export import export

    key = model_key(model, opset)
    path = folder() / f"{key}.onnx" if key else None
    if path is not None and not refresh:
        payload = read_payload(path)
        if payload is not None:
            return payload
    payload = export.keras_to_onnx(model, opset=opset)  # looked up late: tests replace it
    if path is not None:
        write_payload(path, payload)
    return payload


def session(model: Any) -> Any:
    """An onnxruntime CPU session for ``model``; a cached graph it rejects is converted anew."""
    try:
        return cpu_session(onnx_bytes(model))
    except Exception:  # noqa: BLE001  (onnxruntime raises its own types for a bad graph)
        return cpu_session(onnx_bytes(model, refresh=True))


def cpu_session(payload: bytes) -> Any:
    """An onnxruntime CPU session for a serialized graph, its threads not spinning.

    Why not spinning: onnxruntime's threads otherwise busy-wait between operators, taking the
    cores from the decoding threads and from any other process. Alone on 2 cores it makes no
    difference; with two classify processes side by side the pair ran ~10 % faster
    (`benchmarks/onnx_spinning.py`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
