"""What is at a model's cache path, judged without loading it (`zoo.weights.cache_state`), and
what each command says about it: `models` (offline / cached columns), the offline list of the
missing-weights error, `models verify`, `models --measure` and loading (`classify`).

Files here are tiny HDF5 files in Keras's legacy layout (`legacy_file`), written with h5py in
milliseconds: no model is built except where a test says so.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import socket
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest

from kerascope.cli import main
from kerascope.zoo import registry, weights
from kerascope.zoo.weights import cache_state, cached_file, offline_models


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private, empty weights cache; the Lite package counts as not installed, so only what
    is in this folder works offline (and `--measure` times nothing else)."""
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "package_file", lambda spec: None)
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def legacy_file(path: Path, params: int, layers: int = 1) -> Path:
    """A weights file in Keras's legacy layout holding ``params`` float32 values (zeros)."""
    names = [f"layer_{i}" for i in range(layers)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for i, name in enumerate(names):
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode()]
            size = params - (params // layers) * (layers - 1) if i == 0 else params // layers
            group.create_dataset(f"{name}/kernel:0", data=np.zeros(size, np.float32))
    return path


def top_file(name: str) -> Path:
    return cached_file(registry.get(name))


def broken_cache(cache: Path) -> dict[str, str]:
    """One model per problem, at its with-top cache path; the model -> the status expected."""
    top_file("efficientnet_b3").write_bytes(b"")
    top_file("densenet121").write_text("<html>404 Not Found</html>\n")
    loop = top_file("efficientnet_b5")
    loop.symlink_to(loop.name)  # ln -s efficientnetb5.h5 efficientnetb5.h5
    top_file("efficientnet_b4").mkdir()
    top_file("efficientnet_b6").symlink_to("elsewhere/efficientnetb6.h5")
    whole = legacy_file(cache / "whole.h5", 300_000)
    top_file("efficientnet_b0").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    legacy_file(top_file("mobilenet"), 1_000_000)  # another (smaller) model's file
    return {
        "efficientnet_b3": "empty",
        "densenet121": "not HDF5",
        "efficientnet_b5": "link loop",
        "efficientnet_b4": "folder",
        "efficientnet_b6": "dangling link",
        "efficientnet_b0": "damaged",
        "mobilenet": "wrong size",
    }


def good_file(name: str, include_top: bool = True) -> Path:
    """A file of the size the model's weights take (its parameters, as float32)."""
    spec = registry.get(name)
    params = spec.params if include_top else weights.least_params(spec, False)
    return legacy_file(cached_file(spec, include_top), params, layers=3)


@contextlib.contextmanager
def unreadable(path: Path):
    """``chmod 000``, or for root (who reads such files anyway) an `open` that says what a
    user's would: permission denied."""
    if os.geteuid() != 0:
        path.chmod(0)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", refusing_open)
        yield


def table_cells(out: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = out.splitlines()
    header = next(line for line in lines if "name" in line and "cached" in line)
    columns = [c.strip() for c in header.strip("│┃ ").split("┃")]
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == len(columns):
            rows[cells[0]] = cells
    return columns, rows


def test_the_table_names_each_broken_file_and_the_offline_list_leaves_it_out(
    cache, skimage_data, capsys
):
    expected = broken_cache(cache)
    good_file("mobilenet_v3_small")
    good_file("mobilenet_v3_large", include_top=False)
    for name, status in expected.items():
        assert cache_state(registry.get(name)).status == status, name

    assert main(["models"]) == 0
    columns, rows = table_cells(capsys.readouterr().out)
    offline, cached = columns.index("offline"), columns.index("cached")
    for name, status in expected.items():
        assert rows[name][cached] == f"with top: {status}", name
        assert rows[name][offline] == "no", name
    assert rows["mobilenet_v3_small"][cached] == "with top"
    assert rows["mobilenet_v3_small"][offline] == "yes"
    assert rows["mobilenet_v3_large"][cached] == "without top"  # a backbone file only
    assert rows["mobilenet_v3_large"][offline] == "no"
    assert rows["efficientnet_lite0"][cached] == rows["efficientnet_lite0"][offline] == "no"
    assert offline_models() == ["mobilenet_v3_small"]

    # The missing-weights error recommends only what works.
    assert main(["classify", "--model", "vgg16", str(skimage_data / "chelsea.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.rstrip().endswith("Models that work offline here: mobilenet_v3_small")

    assert main(["models", "--format", "json"]) == 0  # as data: not cached, not offline
    data = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in expected:
        assert data[name]["weights"]["cached"] is False and data[name]["offline"] is False
    assert data["mobilenet_v3_small"]["weights"]["cached"] is True


def test_an_unreadable_file_is_unreadable_not_cached(cache):
    spec = registry.get("mobilenet_v3_small")
    path = good_file("mobilenet_v3_small")
    assert cache_state(spec).usable
    with unreadable(path):
        state = cache_state(spec)
        assert state.status == "unreadable" and state.detail == "unreadable: permission denied"
        assert offline_models() == []


def test_size_bounds_follow_the_model(cache):
    """Not smaller than its parameters as float32, nor larger than those plus HDF5's headers;
    a with-top file under the `_notop` name serves (it loads into a model without top)."""
    spec = registry.get("resnet50")
    notop = cached_file(spec, include_top=False)
    legacy_file(notop, weights.least_params(spec, False) * 95 // 100, layers=175)
    assert cache_state(spec, include_top=False).status == "wrong size"
    legacy_file(notop, spec.params, layers=177)  # the with-top file, under the notop name
    assert cache_state(spec, include_top=False).usable
    legacy_file(top_file("mobilenet_v2"), registry.get("mobilenet").params, layers=91)
    state = cache_state(registry.get("mobilenet_v2"))  # MobileNet V1 under V2's name
    assert state.status == "wrong size" and "too large for this model" in state.detail


def test_notop_parameters_are_keras_own():
    """`NOTOP_PARAMS` (the least a `_notop` file holds) is what Keras builds, for two models."""
    import keras

    from kerascope.zoo.applications import NOTOP_PARAMS

    for name in ("mobilenet_v3_small", "efficientnet_b0"):
        spec = registry.get(name)
        with keras.StatelessScope(initialize_variables=False):  # shapes only
            model = spec.builder_fn()(weights=None, include_top=False)
        assert sum(int(np.prod(v.shape)) for v in model.weights) == NOTOP_PARAMS[name]
    keras.backend.clear_session()


def test_verify_gives_each_file_its_row_and_fails_at_the_end(cache, capsys):
    expected = broken_cache(cache)
    readable = good_file("mobilenet_v3_small")
    with unreadable(good_file("densenet201")):
        assert main(["models", "verify", "--format", "json"]) == 1
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert {m: rows[m]["status"] for m in expected} == expected
    assert rows["densenet201"]["status"] == "unreadable"
    assert "permission denied" in rows["densenet201"]["detail"]
    assert rows["mobilenet_v3_small"]["path"] == str(readable)
    assert rows["mobilenet_v3_small"]["status"] == "MISMATCH"  # not Keras's file: hashed
    assert "not cached" not in {r["status"] for r in rows.values()}

    for name, said in (("efficientnet_b5", "a symbolic link loop: remove it"),
                       ("efficientnet_b4", "a folder, not a weights file: remove it")):  # fmt: skip
        assert main(["models", "verify", name]) == 1
        out = capsys.readouterr().out
        assert said in out and "not cached" in out  # the notop file: not there


def test_verify_counts_the_parameters_of_a_file_keras_publishes_no_hash_for(cache, capsys):
    """MobileNet V2's files have no published hash: the layers' parameters are counted."""
    from tests.test_weights_files import write_keras_file

    spec = registry.get("mobilenet_v2")
    write_keras_file(spec, include_top=False, seed=1)  # Keras's own layout, random values
    assert main(["models", "verify", "mobilenet_v2", "--format", "json"]) == 0
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["without top"]["status"] == "no published hash"
    assert "holds the model's 2,257,984 parameters in 104 layers" in rows["without top"]["detail"]
    assert rows["with top"]["status"] == "not cached"

    legacy_file(top_file("mobilenet_v2"), spec.params - 1000, layers=3)  # a size that passes
    assert cache_state(spec).usable
    assert main(["models", "verify", "mobilenet_v2", "--format", "json"]) == 1
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["with top"]["status"] == "MISMATCH"
    assert "holds 3,537,984 parameters in 3 layers" in rows["with top"]["detail"]


def _damaged_lite(name: str) -> None:
    """A ported Lite file whose size is as recorded but whose content is not: it looks cached
    (in the offline list) and fails when loaded, at its SHA-256, before any model is built."""
    spec = registry.get(name)
    path = legacy_file(cached_file(spec), spec.params)
    weights._record(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_measure_carries_on_past_a_bad_file_and_fails_at_the_end(cache, capsys):
    from kerascope.measure import timings

    _damaged_lite("efficientnet_lite0")
    _damaged_lite("efficientnet_lite1")
    assert offline_models() == ["efficientnet_lite0", "efficientnet_lite1"]
    assert main(["models", "--measure"]) == 1
    captured = capsys.readouterr()
    said = captured.err.splitlines()
    assert len(said) == 2
    for line, name in zip(said, ("efficientnet_lite0", "efficientnet_lite1"), strict=True):
        assert line.startswith(f"kerascope: {name}: not measured: cached weights '")
        assert "SHA-256 differs" in line
    assert "kerascope model zoo" in captured.out  # the table after all
    assert timings() == {}


@pytest.mark.parametrize("kind", ["link loop", "folder", "dangling link", "empty", "not HDF5",
                                  "damaged", "unreadable"])  # fmt: skip
def test_loading_says_what_is_at_the_cache_path_in_one_line(kind, cache, skimage_data, capsys):
    name = "efficientnet_b0"
    path = top_file(name)
    expected = {
        "link loop": "which is a symbolic link loop: remove it and put efficientnetb0.h5 ",
        "folder": "which is a folder, not a weights file: remove it",
        "dangling link": "which is a symbolic link to 'gone/efficientnetb0.h5', which does not",
        "empty": "are unusable: empty (0 bytes); delete the file",
        "not HDF5": "are unusable: not a weights file (no HDF5 signature; it starts with '<h",
        "damaged": "are damaged: truncated (",
        "unreadable": f"cannot read '{path}': permission denied (the cached weights of",
    }[kind]
    if kind == "link loop":
        path.symlink_to(path.name)
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to("gone/efficientnetb0.h5")
    elif kind == "empty":
        path.touch()
    elif kind == "not HDF5":
        path.write_text("<html>404 Not Found</html>")
    else:
        legacy_file(path, 2_000_000)
        if kind == "damaged":
            path.write_bytes(path.read_bytes()[:1_000_000])
    photo = str(skimage_data / "chelsea.png")
    with unreadable(path) if kind == "unreadable" else contextlib.nullcontext():
        code = main(["classify", "--model", name, photo])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and expected in captured.err
    assert str(path) in captured.err and "Downloading" not in captured.err
    if kind != "unreadable":
        assert "https://storage.googleapis.com/keras-applications/efficientnetb0.h5" in (
            captured.err
        )


def test_an_unreadable_weights_file_given_says_permission_denied(cache, skimage_data, capsys):
    path = legacy_file(cache / "mine.h5", 1000)
    with unreadable(path):
        code = main(["classify", "--model", "mobilenet_v3_small", "--weights", str(path),
                     str(skimage_data / "chelsea.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"kerascope: error: cannot read '{path}': permission denied\n"


def test_a_weights_file_given_that_is_a_link_loop_says_so(cache, skimage_data, capsys):
    loop = cache / "loop.h5"
    loop.symlink_to(loop.name)
    code = main(["classify", "--model", "mobilenet_v3_small", "--weights", str(loop),
                 str(skimage_data / "chelsea.png")])  # fmt: skip
    assert code == 2 and "is a symbolic link loop" in capsys.readouterr().err


def _no_network(url, filename=None, reporthook=None, data=None):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


def test_a_failed_download_is_our_one_line_without_keras_chatter(
    cache, monkeypatch, skimage_data, capsys
):
    from keras.src.utils import file_utils

    monkeypatch.delenv("KERASCOPE_OFFLINE", raising=False)
    monkeypatch.setattr(file_utils, "urlretrieve", _no_network)  # what no network does
    spec = registry.get("vgg16")
    code = main(["classify", "--model", "vgg16", "--format", "json",
                 str(skimage_data / "chelsea.png")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # Keras's "Downloading data from" went there
    err = captured.err
    assert err.count("\n") == 1 and "Downloading" not in err and "URL fetch" not in err
    assert "not cached, and downloading it failed (Name or service not known)" in err
    assert err.count(spec.weights.url) == 1 and f"at {cached_file(spec)}," in err
    assert "[Errno" not in err and not re.search(r"\bNone\b", err)


def test_a_download_shows_its_file_and_keeps_stdout_clean(cache, monkeypatch, capsys, caplog):
    from keras.src.utils import file_utils

    def fake_download(url, filename=None, reporthook=None, data=None):
        Path(filename).write_bytes(b"weights")
        reporthook(1, 7, 7)

    monkeypatch.delenv("KERASCOPE_OFFLINE", raising=False)
    monkeypatch.setattr(file_utils, "urlretrieve", fake_download)
    spec = registry.get("mobilenet_v2")  # Keras publishes no hash to check the bytes against
    with caplog.at_level("WARNING", logger="kerascope"):
        path = weights.resolve(spec, include_top=False)
    assert path == cached_file(spec, include_top=False) and path.read_bytes() == b"weights"
    captured = capsys.readouterr()
    assert captured.out == ""  # a command's JSON stays JSON
    assert "7/7" in captured.err  # Keras's progress bar, on stderr
    assert [r.getMessage() for r in caplog.records] == [
        f"downloading {spec.weights.notop.filename} from {spec.weights.notop.url}"
    ]
