"""Torch weights files: zip and tar containers, and bounded work (shared references, cycles,
deep nesting, overlapping or expanding zip entries): each refused quickly in one line."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import pytest

from kerascope.zoo.torch_pickle import load_state_dict

from .torch_files import (
    EXPECTED,
    Call,
    Global,
    Raw,
    assert_state,
    dumps,
    emit,
    legacy_file,
    refused,
    sample,
    tensor,
    write,
    zip_file,
)

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
