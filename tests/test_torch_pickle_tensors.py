"""Torch weights files: tensor metadata is checked against its storage, storage sizes against
the bytes in the file, and the legacy header records; truncations are refused."""

from __future__ import annotations

import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from kerascope.zoo.torch_pickle import load_state_dict

from .torch_files import (
    SYS_INFO,
    Call,
    Global,
    Raw,
    assert_state,
    legacy_file,
    refused,
    sample,
    tensor,
    write,
)

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
