"""Hostile ``.pth`` files for the tests of kerascope.zoo.torch_pickle: a tiny pickle assembler
(protocol 2, opcode by opcode, no torch needed to write them), the legacy and zip containers
torch.save writes, a live ``os.system`` payload, and the checks every refusal shares.

Every payload would create a marker file; the tests check it is absent.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kerascope.zoo.torch_pickle import TorchFileError, load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2}}


# --- a tiny pickle assembler (protocol 2), enough for what torch.save writes -----------------


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass(frozen=True)
class Call:  # REDUCE: func(*args)
    func: Any
    args: tuple


@dataclass(frozen=True)
class Pid:  # BINPERSID: a persistent id, how torch names storages
    value: tuple


@dataclass(frozen=True)
class Raw:  # opcodes inserted verbatim
    data: bytes


def emit(v: Any) -> bytes:
    if isinstance(v, Raw):
        return v.data
    if isinstance(v, Global):
        return b"c" + f"{v.module}\n{v.name}\n".encode()
    if isinstance(v, Call):
        return emit(v.func) + emit(tuple(v.args)) + b"R"
    if isinstance(v, Pid):
        return emit(v.value) + b"Q"
    if isinstance(v, tuple):
        return b"(" + b"".join(map(emit, v)) + b"t"
    if isinstance(v, list):
        return b"](" + b"".join(map(emit, v)) + b"e"  # EMPTY_LIST, MARK ... APPENDS
    if isinstance(v, dict):  # an OrderedDict (state dicts, hooks) is built by a global
        items = b"(" + b"".join(emit(k) + emit(x) for k, x in v.items()) + b"u"
        if isinstance(v, OrderedDict):
            return emit(Call(Global("collections", "OrderedDict"), ())) + items
        return b"}" + items
    return pickle.dumps(v, protocol=2)[2:-1]  # a plain value: strip PROTO and STOP


def dumps(v: Any) -> bytes:
    return v if isinstance(v, bytes) else b"\x80\x02" + emit(v) + b"."


def tensor(key, numel, size, stride, offset=0, storage="FloatStorage", legacy=True, pid=None):
    pid = pid or ("storage", Global("torch", storage), key, "cpu", numel)
    pid = pid + (None,) if legacy and len(pid) == 5 else pid  # legacy ids carry view metadata
    args = (Pid(pid), offset, tuple(size), tuple(stride), False, OrderedDict())
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)


def legacy_file(state, storages, magic=MAGIC, protocol=1001, sys_info=SYS_INFO, keys=None):
    """The torch < 1.6 stream: magic, protocol, sys info, state dict, keys, then the storages.

    Each record may be given as ``bytes``: a whole pickle inserted verbatim (a payload)."""
    keys = sorted(storages) if keys is None else keys
    out = b"".join(dumps(r) for r in (magic, protocol, sys_info, state, keys))
    pairs = [(k, storages[k]) for k in keys if k in storages] if isinstance(keys, list) else []
    for _, data in pairs or storages.items():
        count = data[0] if isinstance(data, tuple) else data.size
        raw = data[1] if isinstance(data, tuple) else data.tobytes()
        out += struct.pack("<q", count) + raw
    return out


def zip_file(state, storages, prefix="archive", byteorder=b"little", pkl=None, compress=False):
    buf = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", mode) as z:
        if pkl is not False:
            z.writestr(f"{prefix}/data.pkl", dumps(state) if pkl is None else pkl)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"{prefix}/data/{key}", data.tobytes())
        z.writestr(f"{prefix}/version", "3\n")
    return buf.getvalue()


def sample(legacy=True):
    """A small valid state dict: a matrix, its transposed view, an offset view, an int64 vector."""
    storages = {"0": np.arange(12, dtype=np.float32), "1": np.array([7, -1, 5], dtype=np.int64)}
    state = OrderedDict({
        "w": tensor("0", 12, (3, 4), (4, 1), legacy=legacy),
        "w_t": tensor("0", 12, (4, 3), (1, 4), legacy=legacy),
        "tail": tensor("0", 12, (2, 2), (2, 1), offset=8, legacy=legacy),
        "n": tensor("1", 3, (3,), (1,), storage="LongStorage", legacy=legacy),
        "count": tensor("1", 3, (), (), offset=2, storage="LongStorage", legacy=legacy),
    })  # fmt: skip
    return state, storages


EXPECTED = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "w_t": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    "tail": np.array([[8, 9], [10, 11]], dtype=np.float32),
    "n": np.array([7, -1, 5], dtype=np.int64),
    "count": np.array(5, dtype=np.int64),
}


class Payload:
    """Unpickled by a plain unpickler, this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write(tmp_path, data: bytes, name="weights.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path, *fragments) -> str:
    with pytest.raises(TorchFileError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"cannot read PyTorch weights '{path}': ")
    for fragment in fragments:
        assert fragment in message
    return message


def assert_state(state, expected=EXPECTED):
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        assert np.array_equal(state[key], value), key
