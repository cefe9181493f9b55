"""Torch weights files: crafted valid files load as ``torch.load`` reads them, and code in a
file never runs (payloads in every record, unknown globals, INST/EXT/STACK_GLOBAL opcodes);
the CLI refuses a hostile packaged file in one line. Helpers: tests/torch_files.py."""

from __future__ import annotations

import pickle
import sys
from collections import OrderedDict

import pytest

from kerascope.errors import KerascopeError
from kerascope.zoo import registry
from kerascope.zoo.torch_pickle import TorchFileError, load_state_dict
from kerascope.zoo.weights import WeightsError, package_file

from .torch_files import (
    MAGIC,
    SYS_INFO,
    Call,
    Global,
    Payload,
    Pid,
    Raw,
    assert_state,
    emit,
    legacy_file,
    refused,
    sample,
    write,
    zip_file,
)


@pytest.fixture()
def marker(tmp_path):
    """Where a payload would leave its mark: absent after the test."""
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a payload in a weights file ran"


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
