"""The restricted unpickler behind `kerascope.zoo.torch_pickle`, and its one error type.

A ``torch.save`` state dict needs only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``, the ``torch.*Storage`` types and
persistent ids that name storages. Those become inert stand-ins (`Storage`, `TensorRef`) whose
arguments are type-checked; any other global, any other persistent id and any attempt to set
state on a stand-in is refused, so a hostile file cannot run code. `load_record` scans each
record's opcodes before the C unpickler sees them, so a few bytes cannot make it allocate
gigabytes. Sizes, strides and offsets are checked against the storages in `torch_pickle`,
once the storage bytes are read.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from kerascope.errors import WeightsError

STORAGE_DTYPES = {
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
_MAX_DIMS = 64  # NumPy's limit
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})  # copyreg's cache can bypass find_class


class TorchFileError(WeightsError, ValueError):
    """A ``.pth`` file that is not a well-formed PyTorch state dict, or that tries to run code.

    A `WeightsError`, hence a `KerascopeError`: the CLI prints it as one line (exit code 2).
    It is also a `ValueError`, which is what the reader raised before it had its own type.
    """


def brief(value: Any, depth: int = 0) -> str:
    """A short one-line description of a value from an untrusted file, for error messages."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, str | bytes):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, tuple | list) and len(value) <= 8 and depth < 2:
        items = ", ".join(brief(v, depth + 1) for v in value)
        return f"({items}{',' if len(value) == 1 else ''})"
    return f"<{type(value).__name__}>"


class _Inert:
    """Base of the stand-ins: pickle's BUILD opcode cannot set their attributes."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise TorchFileError(f"refusing to set state on a {type(self).__name__}")


class StorageType(_Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class Storage(_Inert):
    """A flat buffer: filled after unpickling (legacy format) or read from the zip."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int | None) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel  # what the pickle claims; checked against the file when read
        self.data: np.ndarray | None = None


class TensorRef(_Inert):
    """A tensor as the pickle describes it: not trusted until checked against its storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _ints(value: Any) -> bool:
    return isinstance(value, tuple | list) and all(type(v) is int for v in value)


def _rebuild_tensor(*args: Any) -> TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``."""
    if len(args) < 4:
        raise TorchFileError(f"a tensor is rebuilt from {len(args)} arguments, not 4 or more")
    storage, offset, size, stride = args[:4]
    if not isinstance(storage, Storage):
        raise TorchFileError(f"a tensor is built on {brief(storage)}, not on a storage")
    if isinstance(size, tuple | list) and len(size) > _MAX_DIMS:
        raise TorchFileError(f"a tensor with {len(size)} dimensions")
    if type(offset) is not int or not _ints(size) or not _ints(stride):
        raise TorchFileError(
            f"tensor offset {brief(offset)}, size {brief(size)} or stride {brief(stride)} "
            "is not made of integers"
        )
    return TensorRef(storage, offset, tuple(size), tuple(stride))


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
}


class RecordUnpickler(pickle.Unpickler):
    """Plain values only (numbers, strings, lists, dicts): no global, no persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        raise TorchFileError(f"refusing to load {brief(f'{module}.{name}')} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        raise TorchFileError("a persistent id outside the state dict record")


class StateUnpickler(RecordUnpickler):
    """The state dict record: plain values plus tensors, storages and ``OrderedDict``."""

    def __init__(
        self,
        file: BinaryIO,
        storages: dict[str, Storage],
        loader: Callable[[str, np.dtype, int], np.ndarray] | None = None,
    ) -> None:
        super().__init__(file)
        self._storages = storages
        self._loader = loader  # zip format: reads a storage's numel elements when first named

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise TorchFileError(f"unsupported storage type torch.{brief(name)}")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise TorchFileError(f"unsupported persistent id {brief(kind)}")
        if len(pid) not in (5, 6):
            raise TorchFileError(f"a storage id has {len(pid)} fields, not 5 or 6")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, StorageType):
            raise TorchFileError(f"a storage of type {brief(storage_type)}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise TorchFileError(f"storage key {brief(key)} or size {brief(numel)} is malformed")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchFileError("storage views (files from torch < 1.0) are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = Storage(key, storage_type.dtype, numel if self._loader is None else None)
            if self._loader is not None:
                storage.data = self._loader(key, storage.dtype, numel)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype:
            raise TorchFileError(f"storage {brief(key)} is used with two dtypes")
        return storage


def load_record(buf: io.BytesIO, unpickler: type[RecordUnpickler] = RecordUnpickler, *args) -> Any:
    """Unpickle the record at ``buf``'s position, after a scan of its opcodes.

    The C unpickler sizes its memo from the PUT indices it meets and some buffers from length
    fields before reading them, so a few hostile bytes could make it allocate gigabytes. The
    scan (``pickletools.genops``, reading from memory) checks every length against the bytes
    left and requires memo indices to count up from 0, as every pickler writes them. It also
    refuses the extension-registry opcodes: torch never writes them, and a code that
    ``copyreg`` has already resolved in this process would reach no ``find_class``.
    """
    start, puts = buf.tell(), 0
    for op, arg, _ in pickletools.genops(buf):
        if op.name in _EXTENSIONS:
            raise TorchFileError(f"refusing extension code {brief(arg)} (copyreg registry)")
        if op.name in _PUTS:
            if arg > puts:
                raise TorchFileError(f"memo index {brief(arg)} out of sequence (expected {puts})")
            puts += 1
    buf.seek(start)
    return unpickler(buf, *args).load()
