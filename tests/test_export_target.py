"""Where `kerascope export` writes: checked before any work, named as the user named it.

A stress test found an export working 35-41 s before finding it could not write its folder,
in an error naming the hidden temp file (``.x.onnx.6891-....partial``); an output that is a
symbolic link to a missing place made the folders at the link's target (``/nonexistent/dir``);
and ``--precision int8`` exited 0 with a graph that classify would refuse to run.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from kerascope import files, quantize
from kerascope.export import export_model
from kerascope.files import OutputError
from tests.readonly import read_only

from .test_export import run_cli, tiny_model


@pytest.fixture
def no_model_load(monkeypatch):
    """An export that loads the model before refusing its output fails the test."""
    import kerascope.zoo.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    monkeypatch, capsys, no_model_load
):
    with read_only() as folder:
        sub = folder / "sub"
        for out, said in ((folder / "x.onnx", f"could not write '{folder / 'x.onnx'}': "),
                          (sub / "x.onnx", f"could not write '{sub / 'x.onnx'}': its folder "
                           f"'{sub}' cannot be created (")):  # fmt: skip
            code, err = run_cli(["export", "efficientnet_lite0", "-o", str(out)],
                                monkeypatch, capsys)  # fmt: skip
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert said in err and ".partial" not in err, err  # the file, not its folder
            assert "choose another output location" in err
            assert "previous file is kept" not in err  # there was none
        assert os.listdir(folder) == []


def test_a_failed_write_promises_to_keep_a_previous_file_only_where_there_is_one(
    tmp_path, monkeypatch, capsys, no_model_load
):
    """``-o /proc/m.onnx`` said "(any previous file is kept)" of a file that never was."""
    there = tmp_path / "there.csv"
    there.write_text("old\n")
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert str(files.output_error(there, denied)).endswith("(any previous file is kept)")
    assert "kept" not in str(files.output_error(tmp_path / "new.csv", denied))
    if not os.path.isdir("/proc/self"):
        return
    code, err = run_cli(["export", "efficientnet_lite0", "-o", "/proc/m.onnx"], monkeypatch,
                        capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "could not write '/proc/m.onnx'" in err, err
    assert "kept" not in err


@pytest.mark.parametrize("name", ["x.onnx", "x.keras"])
def test_a_write_that_fails_names_the_users_path_not_the_temp_file(tmp_path, monkeypatch, name):
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))

    monkeypatch.setattr(files, "fsync_path", full)  # the write itself fails, after the checks
    out = tmp_path / "exports" / name
    with pytest.raises(OutputError) as caught:
        export_model(tiny_model(), out)
    message = str(caught.value)
    assert f"could not write '{out}': no space left on the device" in message
    assert ".partial" not in message
    assert not (tmp_path / "exports").exists()  # the folder made for it, removed again


def test_a_link_to_a_missing_folder_is_refused_and_no_folder_is_made(
    tmp_path, monkeypatch, capsys, no_model_load
):
    link = tmp_path / "dangling.onnx"
    os.symlink(tmp_path / "gone" / "deeper" / "x.onnx", link)
    code, err = run_cli(["export", "efficientnet_lite0", "-o", str(link)], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write '{link}': it is a symbolic link to '{tmp_path / 'gone'}" in err
    with pytest.raises(OutputError, match="whose folder does not exist"):
        export_model(tiny_model(), link, overwrite=True)
    # Every command's writer: refused the same way, never a folder made for it.
    with pytest.raises(OutputError, match="symbolic link to"):
        files.write_text(link, "results")
    with pytest.raises(OutputError, match="symbolic link to"):
        files.check_output_file(link)
    assert sorted(os.listdir(tmp_path)) == ["dangling.onnx"]
    # Where the link's folder exists, the file it names is written (the link stays).
    (tmp_path / "gone" / "deeper").mkdir(parents=True)
    export_model(tiny_model(), link)
    assert link.is_symlink() and (tmp_path / "gone" / "deeper" / "x.onnx").stat().st_size > 1000


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A tiny saved model, and int8 measured on few crops (the same code as 64 / 200)."""
    clf = tiny_model()
    clf.model.save(tmp_path / "tiny.keras")
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["ant", "bee", "cat"]}))
    monkeypatch.setattr(quantize, "CALIBRATION_IMAGES", 8)
    monkeypatch.setattr(quantize, "CHECK_IMAGES", len(quantize.photo_files()))
    monkeypatch.setattr(quantize, "LADDER", ((),))
    return tmp_path / "tiny.keras"


def test_int8_export_that_misses_the_bound_says_so_and_exits_1(tiny_run, tmp_path, monkeypatch,
                                                               capsys):  # fmt: skip
    """Classify refuses such a graph (exit 2, nothing run); the export writes it, its numbers in
    its metadata, but says it on stderr and exits 1, so a script does not ship it unawares."""
    out = tmp_path / "tiny-int8.onnx"
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # a bound no graph can meet
    code, err = run_cli(["export", str(tiny_run), "-o", str(out), "--precision", "int8"],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    import onnx

    record = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}[quantize.META_KEY])
    agreement = quantize.Agreement(**record["agreement"])
    assert f"wrote {out}, but its int8 graph MISSES the bound" in err
    assert agreement.text() in err and quantize.bound_text() in err
    assert "classify and serve would refuse it" in err
    # The same graph within the bound: written, said, exit 0.
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(quantize, "MAX_MEAN_DP", 1.0)
    code, err = run_cli(["export", str(tiny_run), "-o", str(out), "--precision", "int8",
                         "--overwrite"], monkeypatch, capsys)  # fmt: skip
    assert code == 0 and "meets the bound" in err, err
