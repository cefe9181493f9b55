"""keras.applications weight files: with top and ``_notop``, in Keras's own legacy layout.

Keras's published files cannot be downloaded here, but their layout can be reproduced exactly:
the Keras application built with ``weights=None`` (with and without top), written by Keras's
own legacy HDF5 writer under Keras's file name into the cache. Each file holds values no
initializer draws (a seeded normal), so "loaded" means equal to the file, never random. The
layer names in the file are those of another build (auto-generated ones differ, as in Keras's
real files), so loading must match layers in order, as Keras does.
"""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest

from kerascope.cli import main
from kerascope.zoo import registry
from kerascope.zoo.weights import WeightsError, cached_file
from kerascope.zoo.weights_verify import verify

# The smallest model of every family the zoo lists; the first runs in the quick tests.
FAMILY_MODELS = (
    "mobilenet_v3_small", "vgg16", "resnet50", "resnet50_v2", "inception_v3",
    "inception_resnet_v2", "xception", "mobilenet", "mobilenet_v2", "densenet121",
    "nasnet_mobile", "efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny",
)  # fmt: skip
QUICK = FAMILY_MODELS[0]
NO_TOP_FILE_ONLY = {"vgg16"}  # its with-top file is 553 MB: the notop one (59 MB) is tested


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty weights cache for one test (files are deleted with it)."""
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def write_keras_file(spec, include_top: bool, seed: int) -> list[np.ndarray]:
    """Write ``spec``'s weights file as Keras publishes it; return the values it holds."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    # Shapes first (in a StatelessScope Keras defers every variable's value), then each float
    # variable gets its seeded value: drawn once, not drawn by an initializer and replaced.
    with keras.StatelessScope(initialize_variables=False):
        model = spec.builder_fn()(weights=None, include_top=include_top)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "float" in str(variable.dtype):
            value = rng.standard_normal(variable.shape, dtype=np.float32)
            variable.assign(value.astype(variable.dtype, copy=False))
    path = cached_file(spec, include_top)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    values = [np.asarray(v) for v in model.weights]
    del model
    keras.backend.clear_session()
    return values


def assert_holds(model, values: list[np.ndarray]) -> None:
    """``model``'s weights, in order, are ``values`` (a with-top file may hold more)."""
    weights = model.weights
    assert 0 < len(weights) <= len(values)
    for variable, value in zip(weights, values, strict=False):
        assert variable.shape == value.shape, variable.path
        assert np.array_equal(np.asarray(variable), value), variable.path


def check_family(name: str, both_files: bool = True) -> None:
    """The checks every family passes: cache files load, the offline error names `_notop`."""
    from kerascope.zoo.models import build

    spec = registry.get(name)
    notop = write_keras_file(spec, include_top=False, seed=2)
    assert_holds(build(name, include_top=False, pooling="avg"), notop)
    if both_files:
        top = write_keras_file(spec, include_top=True, seed=1)
        model = build(name)
        assert_holds(model, top)
        assert len(model.weights) == len(top)
    cached_file(spec, include_top=False).unlink()
    with pytest.raises(WeightsError) as raised:
        build(name, include_top=False, pooling="avg")
    message = str(raised.value)
    assert spec.weights.notop.filename in message
    assert f"Put {spec.weights.notop.filename} " in message and "KERASCOPE_OFFLINE" in message
    for path in cached_file(spec).parent.iterdir():
        path.unlink()  # hundreds of MB for the big families: not left for pytest's temp dirs


@pytest.mark.slow  # 15 s
def test_cached_keras_files_load_with_and_without_top(cache):
    check_family(QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_MODELS[1:])
def test_every_family_loads_its_keras_files(cache, name):
    check_family(name, both_files=name not in NO_TOP_FILE_ONLY)


def test_with_top_file_loads_into_a_model_without_top(cache, caplog):
    """The zoo says so through `logging` (a command prints it: `print_library_notes`); the
    test reads the log, not stderr, which shows it only once a command set that up."""
    from kerascope.zoo.models import build

    spec = registry.get(QUICK)
    top = write_keras_file(spec, include_top=True, seed=3)
    path = cache / "downloaded by hand.h5"
    cached_file(spec).rename(path)
    with caplog.at_level("WARNING", logger="kerascope"):
        model = build(QUICK, weights=path, include_top=False, pooling="avg")
    assert_holds(model, top)
    assert len(model.weights) < len(top)  # the classifier (conv_2, logits) was left out
    said = caplog.text
    assert "classifier" in said and "conv_2, logits" in said and str(path) in said


def test_notop_file_for_a_model_with_top_is_one_clear_error(cache, skimage_data, capsys):
    from kerascope.zoo.models import build

    spec = registry.get(QUICK)
    write_keras_file(spec, include_top=False, seed=4)
    notop = cached_file(spec, include_top=False)
    with pytest.raises(WeightsError, match="the file has no classifier"):
        build(QUICK, weights=notop)
    # On the command line: one line naming the file and what to do, no traceback.
    code = main(["classify", "--model", QUICK, "--weights", str(notop),
                 str(skimage_data / "chelsea.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert notop.name in err and "no classifier" in err and "without top" in err


@pytest.mark.slow  # 14 s
def test_verify_compares_cached_files_with_published_hashes(cache, capsys):
    from kerascope.zoo.models import build

    spec = registry.get(QUICK)
    top = write_keras_file(spec, include_top=True, seed=5)
    # Loading uses a cached file as it is, hash or not: no MD5 of every file on every start.
    assert_holds(build(QUICK), top)
    digest = hashlib.md5(cached_file(spec).read_bytes()).hexdigest()
    checks = {c.kind: c for c in verify(spec)}
    mismatch = checks["with top"]  # written here: not the file Keras published
    assert mismatch.status == "MISMATCH" and mismatch.failed
    assert spec.weights.file_hash in mismatch.detail and digest in mismatch.detail
    assert checks["without top"].status == "not cached"

    assert main(["models", "verify", QUICK, "--format", "json"]) == 1
    rows = capsys.readouterr().out
    assert '"MISMATCH"' in rows and '"not cached"' in rows and digest in rows
    assert main(["models", "verify"]) == 1  # every cached file: this one
    out = capsys.readouterr().out
    assert cached_file(spec).name in out and "MISMATCH" in out and "not cached" not in out


def test_verify_without_published_hash_still_judges_the_file(cache, capsys):
    """MobileNet V2's files have no hash to compare with: a file that is no HDF5 at all fails
    anyway (before, "no published hash" and exit code 0). A file in Keras's layout passes:
    tests/test_models_cache.py."""
    spec = registry.get("mobilenet_v2")
    assert spec.weights.file_hash is None and spec.weights.notop.file_hash is None
    cached_file(spec, include_top=False).write_bytes(b"copied by hand")
    assert main(["models", "verify", "MobileNetV2", "--format", "json"]) == 1
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["with top"]["status"] == "not cached"
    assert rows["without top"]["status"] == "not HDF5"
    assert "it starts with 'copied by hand'" in rows["without top"]["detail"]


def test_verify_checks_ported_files_against_their_recorded_checksum(
    lite0, tmp_path, monkeypatch, capsys
):
    import shutil

    from kerascope.zoo.weights import checksum_file

    spec = registry.get("efficientnet_lite0")
    ported = cached_file(spec)  # in the session's cache, where `lite0` was ported
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path))  # a copy is damaged, not that file
    shutil.copy(ported, tmp_path)
    shutil.copy(checksum_file(ported), tmp_path)
    assert main(["models", "verify", "efficientnet_lite0"]) == 0
    assert "OK" in capsys.readouterr().out
    damaged = bytearray((tmp_path / ported.name).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / ported.name).write_bytes(bytes(damaged))
    assert main(["models", "verify", "efficientnet_lite0", "--format", "json"]) == 1
    out = capsys.readouterr().out
    assert '"MISMATCH"' in out and "SHA-256 differs" in out


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "missing"])
def test_weights_that_are_not_a_regular_file_are_named_as_such(kind, tmp_path, skimage_data,
                                                                capsys):  # fmt: skip
    """Issue 23: a directory, FIFO or /dev/zero given to --weights said "does not exist"."""
    import os

    path = {"device": "/dev/zero"}.get(kind, str(tmp_path / "weights.h5"))
    if kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    expected = {
        "directory": "is a directory: pass the weights file inside it",
        "fifo": "is a FIFO, not a regular file: save the weights to a file and pass that file",
        "device": "is a device, not a regular file: save the weights to a file",
        "missing": "does not exist",
    }[kind]
    code = main(["classify", "--model", QUICK, "--weights", path,
                 str(skimage_data / "chelsea.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kerascope: error: weights file '{path}' {expected}")


def test_another_models_keras3_weights_say_so(tmp_path, skimage_data, capsys):
    """Before: "A total of 99 objects could not be loaded. Example error message for object
    <...>: (is it a weights file of this model?)", the example empty."""
    import keras

    inputs = keras.Input((16, 16, 3))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Conv2D(4, 3)(inputs)))
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    code = main(["classify", "--weights", str(path), str(skimage_data / "chelsea.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "layers found no weights in the file: it holds another model's weights" in err
