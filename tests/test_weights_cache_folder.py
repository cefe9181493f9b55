"""An unusable weights cache folder, and cached files that are not the model's, said as such.

A file where ``~/.keras/models`` belongs gave a ``FileExistsError`` traceback even for the
default model; ``KERAS_HOME`` under /proc or naming a file gave a bare OS error; a read-only
cache "could not write ...: choose another output location". Each is now one line naming the
weights cache and ``KERASCOPE_HOME``, and a model whose weights ship in a package still runs
(ported into the user's own temp folder, where later runs reuse it). A cached file of another
architecture but about the right size, or the without-top file under the with-top name, says
whose it is and what to put there.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from kerascope import config
from kerascope.cli import main
from kerascope.zoo import cache_folder, registry, weights
from kerascope.zoo.weight_files import HDF5_SIGNATURE
from kerascope.zoo.weights import WeightsError, cached_file, resolve
from tests.readonly import read_only
from tests.test_weights_files import write_keras_file


@pytest.fixture
def fresh_ports(monkeypatch, tmp_path):
    """No port made for an earlier test's run is reused, and the temp folder is the test's."""
    monkeypatch.setattr(cache_folder, "_ported", {})
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    return tmp_path / "tmp"


def _user_folder(tmp) -> Path:
    return tmp / f"kerascope-{os.getuid()}"


def _assert_ported_outside(spec, path, caplog, cache, why: str, tmp) -> None:
    """``path`` holds the packaged weights in the user's own temp folder (mode 0700), named as
    in the cache, with their checksum record, and the log said why, once."""
    assert path.is_file() and path.read_bytes()[:8] == HDF5_SIGNATURE
    assert path.parent == _user_folder(tmp) and path.name == cached_file(spec).name
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert weights.cache_problem(path) is None  # size + SHA-256 recorded, as the cache's
    said = [r.getMessage() for r in caplog.records if "weights cache" in r.getMessage()]
    assert len(said) == 1, said
    assert f"the weights cache '{cache}'" in said[0] and why in said[0]
    assert (
        "KERASCOPE_HOME" in said[0] and f"into '{path.parent}', where later runs find it" in said[0]
    )


def test_a_file_where_the_cache_belongs_still_ports_the_default_model(
    tmp_path, monkeypatch, caplog, fresh_ports
):
    cache = tmp_path / "models"
    cache.write_text("x\n")
    monkeypatch.setenv("KERASCOPE_HOME", str(cache))
    spec = registry.get("efficientnet_lite0")
    with caplog.at_level("WARNING", logger="kerascope"):
        path = resolve(spec)
        assert resolve(spec) == path  # one port per process, said once
    _assert_ported_outside(
        spec, path, caplog, cache, "is a file, not a folder: move that file", fresh_ports
    )
    assert cache.read_text() == "x\n"


def test_a_read_only_cache_still_runs_the_default_model(monkeypatch, caplog, fresh_ports):
    spec = registry.get("efficientnet_lite1")
    with read_only() as cache, caplog.at_level("WARNING", logger="kerascope"):
        monkeypatch.setenv("KERASCOPE_HOME", str(cache))
        path = resolve(spec)
        assert os.listdir(cache) == []
    _assert_ported_outside(
        spec, path, caplog, cache, "writ", fresh_ports
    )  # not writable / read-only


def test_a_port_outside_the_cache_is_reused_by_later_runs_never_piled_up(
    tmp_path, monkeypatch, caplog, fresh_ports
):
    """A folder per run, removed at exit, was left behind by every hard stop (19 MB each) and
    ported again every run; the user's folder is checked as the cache is, and reused."""
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "afile"))
    (tmp_path / "afile").write_text("")
    spec = registry.get("efficientnet_lite0")
    first = resolve(spec)
    made = first.stat()
    # A later process (no memo): the same file, read, not ported again; said so.
    monkeypatch.setattr(cache_folder, "_ported", {})
    monkeypatch.setattr(weights, "_port", lambda *a: pytest.fail("ported again"))
    # a port a hard stop cut short (its process gone) is cleared, a live one's is not
    dead = first.with_name(f".{first.name}.999999999-0123abcd.partial.weights.h5")
    live = first.with_name(f".{first.name}.{os.getpid()}-0123abcd.partial.weights.h5")
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"x" * 1000)
    with caplog.at_level("WARNING", logger="kerascope"):
        again = resolve(spec)
    assert again == first and again.stat().st_ino == made.st_ino
    assert f"was read from '{first.parent}', where an earlier run ported it" in caplog.text
    assert sorted(os.listdir(fresh_ports)) == [_user_folder(fresh_ports).name]
    # Damaged there: ported again (the checksum says so), the dead port's temp file removed.
    monkeypatch.undo()
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "afile"))
    monkeypatch.setattr("tempfile.tempdir", str(fresh_ports))
    monkeypatch.setattr(cache_folder, "_ported", {})
    with open(first, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 64)
    assert resolve(spec) == first and weights.cache_problem(first) is None
    assert not dead.exists() and live.exists()


@pytest.mark.parametrize("how", ["others may write", "another user's", "a link"])
def test_a_temp_folder_others_could_fill_is_never_read(how, tmp_path, monkeypatch, caplog,
                                                       fresh_ports):  # fmt: skip
    """/tmp is shared: weights another user planted in 'kerascope-<uid>' would be loaded."""
    folder = _user_folder(fresh_ports)
    if how == "a link":
        (tmp_path / "theirs").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "theirs")
    else:
        folder.mkdir()
        os.chmod(folder, 0o777 if how == "others may write" else 0o700)
        if how == "another user's":
            if os.geteuid() != 0:
                pytest.skip("only root can give a folder to another user")
            os.chown(folder, 12345, 12345)
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "afile"))
    (tmp_path / "afile").write_text("")
    spec = registry.get("efficientnet_lite0")
    planted = folder / cached_file(spec).name
    planted.write_bytes(b"planted")
    with caplog.at_level("WARNING", logger="kerascope"):
        path = resolve(spec)
    assert path.parent != folder and path.read_bytes()[:8] == HDF5_SIGNATURE
    assert planted.read_bytes() == b"planted"  # neither read nor replaced
    reason = {"others may write": "is open to other users (mode 777",
              "another user's": "belongs to another user (uid 12345",
              "a link": "is not a folder"}[how]  # fmt: skip
    assert f"'{folder}' {reason}" in caplog.text and "for this run only" in caplog.text


def test_an_unusable_home_keeps_the_jax_cache_in_the_users_temp_folder(tmp_path, monkeypatch,
                                                                       fresh_ports):  # fmt: skip
    """$KERASCOPE_HOME/jax-cache under a file or on a read-only disk: JAX warned in two lines on
    every run and compiled cold."""
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "afile"))
    config._persistent_jax_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(_user_folder(fresh_ports) / "jax-cache")
    with read_only() as ro:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        monkeypatch.setenv("KERASCOPE_HOME", str(ro / "missing"))
        config._persistent_jax_cache()
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(_user_folder(fresh_ports) /
                                                              "jax-cache")  # fmt: skip
        assert os.listdir(ro) == []
    # A usable home keeps it there; the user's own setting always wins.
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "home"))
    config._persistent_jax_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "home" / "jax-cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/mine")
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "afile"))
    config._persistent_jax_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/mine"


def test_a_cache_on_a_read_only_disk_says_to_set_kerascope_home_not_create_it(monkeypatch):
    """ "cannot be created ('/ro' is not writable): create it" could not be done there."""
    if os.geteuid() != 0:
        pytest.skip("a plain user's read-only folder is a permission (EACCES), said as such")
    with read_only() as ro:
        for home, said in ((ro / "missing", f"cannot be created ('{ro}' is on a read-only file "
                            "system); set KERASCOPE_HOME to a folder you can write"),
                           (ro, "is on a read-only file system; set KERASCOPE_HOME to a folder "
                            "you can write")):  # fmt: skip
            monkeypatch.setenv("KERASCOPE_HOME", str(home))
            with pytest.raises(WeightsError) as caught:
                cache_folder.make()
            assert said in str(caught.value), str(caught.value)
            assert "create it" not in str(caught.value) and "make it writable" not in str(
                caught.value)  # fmt: skip


@pytest.mark.parametrize("where", ["file", "under a file", "proc"])
def test_a_model_to_download_names_the_unusable_cache(where, tmp_path, monkeypatch):
    monkeypatch.delenv("KERASCOPE_HOME")
    if where == "proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc here")
        home, cache = "/proc/kh", "/proc/kh/models"
        reason = "cannot be created"
    else:
        home = tmp_path / "keras"
        (home if where == "under a file" else home / "models").parent.mkdir(exist_ok=True)
        (home if where == "under a file" else home / "models").write_text("x")
        cache = home / "models"
        reason = "is a file" if where == "file" else f"lies under '{home}', which is a file"
    monkeypatch.setenv("KERAS_HOME", str(home))
    # offline, and where Keras's own download would try (/proc takes no new folder: only the
    # try to make it tells; offline nothing is made, so the message does not know)
    for downloads in ("1", "0") if where != "proc" else ("0",):
        monkeypatch.setenv("KERASCOPE_OFFLINE", downloads)
        with pytest.raises(WeightsError) as caught:
            resolve(registry.get("mobilenet"))
        message = str(caught.value)
        assert f"the weights cache '{cache}' ($KERAS_HOME/models) {reason}" in message
        assert "set KERASCOPE_HOME" in message and "--weights FILE" in message
        assert "Put mobilenet" not in message  # "put it in a file" cannot be done
    assert not os.path.exists("/proc/kh")


def test_models_verify_says_the_cache_is_a_file(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "models"
    cache.write_text("x")
    monkeypatch.setenv("KERASCOPE_HOME", str(cache))
    code = main(["models", "verify"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"the weights cache '{cache}' (KERASCOPE_HOME) is a file, not a folder" in err


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def _mobilenet_v2_at_0_75(path) -> None:
    """Keras's MobileNetV2 at alpha 0.75 with top, as Keras writes its files (zeros): 2,663,064
    parameters, close enough to MobileNetV3-Small's 2,554,968 for the size check to pass."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    with keras.StatelessScope(initialize_variables=False):
        model = keras.applications.MobileNetV2(weights=None, alpha=0.75,
                                               input_shape=(224, 224, 3))  # fmt: skip
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    keras.backend.clear_session()


def test_a_cached_file_of_another_architecture_and_about_the_size_says_whose(cache, skimage_data,
                                                                           capsys):  # fmt: skip
    spec = registry.get("mobilenet_v3_small")
    path = cached_file(spec)
    _mobilenet_v2_at_0_75(path)
    code = main(["classify", "--model", spec.name, str(skimage_data / "chelsea.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cached weights '{path}' for 'mobilenet_v3_small' are not its own" in err
    assert "it holds the weights of 'mobilenet_v2' at alpha 0.75 (with top): 2,663,064" in err
    assert f"delete the file and put {spec.weights.filename} (download: https://" in err
    # Given with --weights, the same file is named, with what to pass instead.
    given = cache / "elsewhere.h5"
    path.rename(given)
    code = main(["classify", "--model", spec.name, "--weights", str(given),
                 str(skimage_data / "chelsea.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"cannot load weights '{given}' into 'mobilenet_v3_small': it holds " in err
    assert "'mobilenet_v2' at alpha 0.75" in err and "--model" in err


def test_the_without_top_file_under_the_with_top_name_says_what_to_put_there(cache, skimage_data,
                                                                            capsys):  # fmt: skip
    spec = registry.get("mobilenet_v3_small")
    write_keras_file(spec, include_top=False, seed=5)
    cached_file(spec, include_top=False).rename(cached_file(spec))
    code = main(["classify", "--model", spec.name, str(skimage_data / "chelsea.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cached weights '{cached_file(spec)}' for 'mobilenet_v3_small'" in err
    assert "the file has no classifier" in err
    assert f"delete the file and put {spec.weights.filename} (download: https://" in err
    assert "build the model without top" not in err  # the model asked for has its top
