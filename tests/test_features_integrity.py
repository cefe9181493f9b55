"""The feature store's output (issue 23): one writer at a time, and a ``features.h5`` that is
not a readable feature file is refused in one line and kept, never replaced or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main

ROOT = Path(__file__).resolve().parents[1]
LITE0 = "efficientnet_lite0"

# Extracts features into argv[2] and, after the first batch, waits for argv[3] to exist (the
# test's signal), having created argv[3] + ".paused": a run caught in the middle of its work.
PAUSED_RUN = """
import sys, time
from pathlib import Path
from kerascope.bottleneck import extract_features
data, out, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
def pause(backbone, done, total):
    if done and not go.exists():
        Path(str(go) + ".paused").touch()
        deadline = time.monotonic() + 600
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
store = extract_features(data, ["efficientnet_lite0"], output=out, batch_size=2, progress=pause)
print(store.computed)
"""

# Holds the output's writer lock until argv[2] exists.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from kerascope.bottleneck.extract import _writer_lock
out, release = Path(sys.argv[1]), Path(sys.argv[2])
with _writer_lock(out):
    Path(str(release) + ".held").touch()
    while not release.exists():
        time.sleep(0.05)
"""


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("kerascope: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, skimage_data) -> Path:
    """``train/<class>/``: three crops each of a real cat and a real cup of coffee."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        with Image.open(skimage_data / f"{name}.png") as img:
            rgb = img.convert("RGB")
        for i in range(3):
            rgb.crop((20 * i, 10 * i, 200 + 20 * i, 200 + 10 * i)).save(folder / f"{i}.jpg")
    return root


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _h5_file(path: Path) -> bytes:
    """A real HDF5 file of about 400 kB (a feature-store group), its bytes."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(f"{LITE0},layer=last,pool=avg,size=224")
        g.create_dataset("features", data=np.random.default_rng(0).random((80, 1280), "f4"))
        g.create_dataset("done", data=np.ones(80, bool))
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "folder"])
def test_a_features_h5_that_is_not_a_feature_file_is_one_line_and_kept(
    photos, tmp_path, capsys, kind
):
    """Before: OSError ("file signature not found", "truncated file") tracebacks, after the
    whole dataset was hashed and the weights ported."""
    from kerascope.bottleneck import FeatureCacheError, FeatureStore, extract_features

    out = tmp_path / "features.h5"
    if kind == "text":
        out.write_text("my notes, not features\n")
    elif kind == "truncated":
        out.write_bytes(_h5_file(out)[:100_000])
    elif kind == "empty":
        out.write_bytes(b"")
    else:
        out.mkdir()
    before = out.read_bytes() if out.is_file() else None
    started = time.monotonic()
    assert main(["features", str(photos), "-o", str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert time.monotonic() - started < 30  # refused before any model work
    assert f"'{out}'" in line
    if kind == "folder":
        assert "is a folder" in line and out.is_dir()
    else:
        assert "not a readable feature file" in line and "move it away" in line
        assert out.read_bytes() == before
        with pytest.raises(FeatureCacheError, match="not a readable feature file"):
            FeatureStore(out).keys()
        with pytest.raises(FeatureCacheError, match="not a readable feature file"):
            extract_features(photos, [LITE0], output=out)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["features.h5"]  # no work file, no lock file left


def test_a_second_writer_is_refused_at_once_while_the_lock_is_held(photos, tmp_path, capsys):
    """Before: there was no lock; the second run deleted the first one's work file."""
    out = tmp_path / "features.h5"
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(release)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(Path(f"{release}.held"), holder, timeout=120)
        assert main(["features", str(photos), "-o", str(out)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"'{out}' is being written by another kerascope process (pid {holder.pid})" \
            in line  # fmt: skip
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert not (tmp_path / ".features.h5.lock").exists()  # removed by its holder on release


@pytest.mark.slow
def test_two_runs_on_one_output_the_second_is_refused_and_the_first_finishes(
    photos, tmp_path, capsys
):
    """Before: the second ran too (exit 0) and removed the first one's work file
    ``features.h5.partial``, which HDF5's own file lock made unreadable to it."""
    import kerascope.bottleneck as kf

    out, go = tmp_path / "features.h5", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, str(photos), str(out), str(go)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        _wait_for(Path(f"{go}.paused"), first)
        assert kf.partial_path(out).is_file() and not out.exists()
        assert main(["features", str(photos), "-o", str(out)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"being written by another kerascope process (pid {first.pid})" in line
        assert kf.partial_path(out).is_file()  # the first run's work is untouched
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    key = kf.FeatureSpec.make(LITE0).key
    assert stdout.strip() == str({key: 6})
    got = kf.FeatureStore(out).load(LITE0)
    assert got.features.shape == (6, 1280) and sorted(p.name for p in tmp_path.iterdir()) == [
        "features.h5", "go", "go.paused"]  # fmt: skip
    again = kf.extract_features(photos, [LITE0], output=out)  # now alone: all cached
    assert again.computed == {key: 0}
    np.testing.assert_allclose(kf.features(got.paths[:2]), got.features[:2], atol=1e-5)


def test_features_into_a_read_only_folder_is_one_line(photos, capsys):
    from .readonly import read_only

    with read_only() as disk:
        out = disk / "features.h5"
        assert main(["features", str(photos), "-o", str(out)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"'{out}'" in line and ("read-only" in line or "permission denied" in line)
        assert os.listdir(disk) == []


def test_a_bad_layer_leaves_no_work_file_and_skipped_files_are_named(photos, tmp_path, capsys):
    """Before: --layer nosuch left an empty features.h5.partial; --skip-bad left files out
    in silence ("computed 6 row(s)", nothing more)."""
    import shutil

    out = tmp_path / "fz.h5"
    assert main(["features", str(photos), "--layer", "nosuch", "-o", str(out)]) == 2
    assert "has no layer 'nosuch'" in _one_line_error(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    (data / "train" / "chelsea" / "notes.jpg").write_text("garbage")
    assert main(["features", str(data), "--skip-bad", "-o", str(tmp_path / "f.h5")]) == 0
    err = capsys.readouterr().err
    assert "--skip-bad left out 1 unreadable file(s): '" in err
    assert "notes.jpg' (not an image" in err


def test_a_second_dataset_written_into_a_store_says_it_replaces_the_first(
    photos, tmp_path, capsys, monkeypatch
):
    """Before: a store written for another dataset silently lost the first dataset's rows; one
    changed image (the usual rebuild) and other weights (all rows recomputed) stay quiet."""
    import shutil

    import h5py

    import kerascope.bottleneck.extract as extract

    out = tmp_path / "f.h5"
    assert main(["features", str(photos), "-o", str(out)]) == 0
    real = extract.weights_checksum
    monkeypatch.setattr(extract, "weights_checksum", lambda p: "other-" + real(p))
    assert main(["features", str(photos), "-o", str(out)]) == 0
    monkeypatch.undo()
    assert "not in this dataset" not in capsys.readouterr().err
    edited = Path(shutil.copytree(photos, tmp_path / "edited"))
    one = edited / "train" / "chelsea" / "0.jpg"
    Image.open(one).transpose(Image.FLIP_LEFT_RIGHT).save(one)
    assert main(["features", str(edited), "-o", str(out)]) == 0
    assert "not in this dataset" not in capsys.readouterr().err

    other = tmp_path / "other"
    for name in ("chelsea", "coffee"):
        (other / "train" / name).mkdir(parents=True)
        for i, path in enumerate(sorted((photos / "train" / name).iterdir())):
            Image.open(path).transpose(Image.FLIP_TOP_BOTTOM).save(
                other / "train" / name / f"{i}.jpg"
            )
    assert main(["features", str(other), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"f.h5 held {LITE0} features of 6 images that are not in this dataset" in err
    assert "give another -o to keep both" in err
    with h5py.File(out) as f:
        (group,) = f.values()
        assert all(p.decode().startswith(str(other)) for p in group["path"][:])
