"""File names that are not UTF-8 (PEP 383 surrogates) in evaluate's pictures and files.

Before: matplotlib refused such a name in a ``top_losses.png`` title, and evaluate ended in a
traceback after scoring every image.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from kerascope.cli import main
from tests.test_evaluate import untrained_run

CLASSES = ["cat", "coffee"]


def test_evaluate_draws_and_writes_names_that_are_not_utf8(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    untrained_run(run, CLASSES)
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(3):
            path = os.fsencode(tmp_path / "data" / name) + b"/x\xff%d.png" % k
            picture = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
            picture.save(os.fsdecode(path), format="PNG")
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(tmp_path / "data"), "-o", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n"] == 6
    for picture in ("top_losses.png", "predictions.png", "confusion.png"):
        assert Image.open(out / picture).size[0] > 100


def _rename_not_utf8(folder) -> None:
    """Every file in ``folder`` renamed to a name holding the byte 0xff (not UTF-8)."""
    for k, path in enumerate(sorted(folder.iterdir())):
        os.rename(path, os.fsdecode(os.fsencode(folder) + b"/x\xff%d.jpg" % k))


def test_train_records_names_that_are_not_utf8_and_resumes_on_them(tmp_path):
    """Before: writing split.json crashed with a UnicodeEncodeError before the first epoch.
    The names are kept exactly (escaped in the JSON), so a resume finds its files again."""
    import pytest

    from kerascope.rundir import read_split
    from kerascope.testing.photos import cat_and_coffee
    from kerascope.training import train

    from .test_train import StopAfter

    data = cat_and_coffee(tmp_path / "data", n=6, size=32)
    for name in ("cat", "coffee"):
        _rename_not_utf8(data / name)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(data, recipe="lenet", output=run, epochs=2, image_size=32, batch_size=8,
              progress=False, callbacks=[StopAfter(0)])  # fmt: skip
    files = {f for fs in read_split(run)["splits"].values() for f in fs}
    assert files == {os.path.relpath(p, data) for p in data.glob("*/*")}  # exact, 12 names
    result = train(resume=run, progress=False)
    assert sum(sum(c.values()) for c in result.config["counts"].values()) == 12


def test_a_class_folder_named_not_in_utf8_is_refused_in_one_line(tmp_path):
    """Before: the scan crashed (UnicodeEncodeError) hashing the class name for its split."""
    from kerascope.testing.photos import cat_and_coffee

    data = cat_and_coffee(tmp_path / "data", n=3, size=32)
    os.rename(data / "cat", os.fsdecode(os.fsencode(data) + b"/cat\xff"))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", str(data), "--recipe", "lenet", "-o", str(tmp_path / "run")]) == 2
    line = err.getvalue().strip().splitlines()[-1]
    assert "class folder" in line and "cat\ufffd" in line and "not UTF-8: rename it" in line


def test_split_json_keeps_one_spelling_of_each_name(tmp_path):
    """A run recorded on macOS (decomposed names) resumed on Linux (composed): before, each
    accented file was listed twice, once per spelling, and then trained or scored twice."""
    import json
    import unicodedata

    from kerascope.rundir import write_split

    root = tmp_path / "data"
    nfd = {"train": ["cat/cafe\u0301.jpg", "cat/a.jpg"], "validation": ["cat/the\u0301.jpg"]}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "split.json").write_text(json.dumps({"data": str(root), "splits": nfd}))
    now = {name: [(str(root / unicodedata.normalize("NFC", f)), 0) for f in files]
           for name, files in nfd.items()}  # fmt: skip
    write_split(tmp_path / "run", root, now)
    record = json.loads((tmp_path / "run" / "split.json").read_text())["splits"]
    assert {k: len(v) for k, v in record.items()} == {"train": 2, "validation": 1}


def test_features_store_names_that_are_not_utf8_and_keep_them_on_a_rerun(tmp_path):
    """Before: creating the HDF5 store crashed (its strings are UTF-8). A rerun keeps the
    stored features (the names compare as stored) instead of computing them again."""
    import h5py

    from kerascope.testing.photos import cat_and_coffee

    data = cat_and_coffee(tmp_path / "data", n=2, size=32)
    for name in ("cat", "coffee"):
        _rename_not_utf8(data / name)
    out = tmp_path / "f.h5"
    argv = ["features", str(data), "--backbone", "efficientnet_lite0", "--image-size", "64",
            "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    with h5py.File(out) as f:
        group = f[next(iter(f))]
        paths = [p.decode() for p in group["path"][:]]
    stamp = out.stat().st_ino, out.stat().st_mtime_ns
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["x\ufffd0.jpg", "x\ufffd0.jpg", "x\ufffd1.jpg", "x\ufffd1.jpg"]
    assert main(argv) == 0
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == stamp  # kept, not written again


def test_write_json_escapes_only_what_utf8_cannot_hold(tmp_path):
    """A name that is not UTF-8 is escaped (and reads back the same); others stay readable.
    Before the review: one such name escaped every accented or CJK name in the file."""
    from kerascope.files import write_json

    data = {"splits": ["caf\u00e9/0.jpg", "\u732b/1.jpg", "x\udcff.jpg"]}
    text = write_json(tmp_path / "s.json", data).read_text(encoding="utf-8")
    assert "caf\u00e9/0.jpg" in text and "\u732b/1.jpg" in text and "x\\udcff.jpg" in text
    assert json.loads(text) == data
