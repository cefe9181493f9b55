"""CSV outputs quote text cells a spreadsheet would run as formulas (OWASP CSV injection).

File names and class names come from whoever made the folder or trained the run; opened in a
spreadsheet, a cell such as ``=HYPERLINK(...)`` would be a live formula. ``classify --format
csv`` and ``predict`` prefix such text with a single quote and leave numbers alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.classification import ImageResult, Prediction
from kerascope.cli import main
from kerascope.output import csv_safe, render
from kerascope.prediction import predict
from tests.test_evaluate import untrained_run

CLASSES = ['=HYPERLINK("http://evil.example","x")', "@SUM(A1)"]
NAMES = ["=1+2.png", "+cmd.png", "@at.png", "plain.png"]


def test_csv_safe_quotes_formula_text_and_keeps_numbers():
    row = {
        "eq": "=1+2",
        "plus": "+1",
        "minus": "-1",
        "at": "@x",
        "tab": "\tx",
        "cr": "\rx",
        "text": "cat.png",
        "inner": "a=b-c",
        "empty": "",
        "negative": -0.25,
        "rank": 3,
    }
    assert csv_safe(row) == {
        **row,
        "eq": "'=1+2",
        "plus": "'+1",
        "minus": "'-1",
        "at": "'@x",
        "tab": "'\tx",
        "cr": "'\rx",
    }


def test_render_csv_escapes_paths_names_and_errors():
    results = [
        ImageResult("=cmd|' /C calc'!A0.png", [Prediction(1, 0, "-n01", "@name", 0.5)]),
        ImageResult("+broken.png", error="-bad file"),
    ]
    rows = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    assert rows[0] == {
        "image": "'=cmd|' /C calc'!A0.png",
        "rank": "1",
        "class_id": "'-n01",
        "name": "'@name",
        "probability": "0.5",
        "error": "",
    }
    assert rows[1]["image"] == "'+broken.png" and rows[1]["error"] == "'-bad file"
    # six significant digits: 2.8e-07 was written 0.0 (six decimals), as a class given nothing
    tiny = [
        ImageResult(
            "a.png", [Prediction(1, 0, "0", "a", 0.6857623), Prediction(2, 1, "1", "b", 2.8e-07)]
        )
    ]
    written = [r["probability"] for r in csv.DictReader(io.StringIO(render(tiny, "csv")))]
    assert written == ["0.685762", "2.8e-07"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A LeNet run directory (untrained) whose class names are formulas."""
    return untrained_run(tmp_path_factory.mktemp("run"), CLASSES)


@pytest.fixture()
def images(tmp_path, monkeypatch) -> list[str]:
    """Real PNGs whose relative paths start with formula characters."""
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return list(NAMES)


def _check(rows: list[dict], path_key: str, name_key: str) -> None:
    assert [r[path_key] for r in rows] == ["'=1+2.png", "'+cmd.png", "'@at.png", "plain.png"]
    for r in rows:
        assert r[name_key] in {"'" + c for c in CLASSES}
        assert 0.0 <= float(r["probability"]) <= 1.0  # a number, not quoted


def test_classify_csv_output_is_escaped(run_dir, images, tmp_path):
    out = tmp_path / "out.csv"
    code = main(
        ["classify", *images, "--model", str(run_dir), "-k", "1", "-f", "csv", "-o", str(out)]
    )
    assert code == 0
    _check(list(csv.DictReader(out.open(newline=""))), "image", "name")


def test_predict_csv_is_escaped_and_returned_rows_are_not(run_dir, images, tmp_path):
    out = tmp_path / "predictions.csv"
    rows = predict(run_dir, images, out)
    _check(list(csv.DictReader(out.open(newline=""))), "path", "label")
    assert [r.source for r in rows] == NAMES  # the API returns the data as it is
    assert all(r.label in CLASSES for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_writes_a_file_name_that_is_not_utf8(run_dir, tmp_path, suffix):
    """Before: one such name (PEP 383 surrogates) crashed the CSV and JSON writers with a
    UnicodeEncodeError, losing the whole folder's rows; classify's writers already cleaned it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in (b"bad\xff.png", "caf\u00e9.png".encode(), b"plain.png"):
        picture = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        picture.save(os.fsdecode(os.fsencode(folder) + b"/" + name), format="PNG")
    out = tmp_path / f"predictions{suffix}"
    assert main(["predict", str(run_dir), str(folder), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")  # strict: the file is valid UTF-8
    rows = json.loads(text) if suffix == ".json" else list(csv.DictReader(io.StringIO(text)))
    names = sorted(Path(r["path"]).name for r in rows)
    assert names == ["bad\ufffd.png", "caf\u00e9.png", "plain.png"]
    labels = set(CLASSES) if suffix == ".json" else {"'" + c for c in CLASSES}
    assert all(r["label"] in labels for r in rows)
