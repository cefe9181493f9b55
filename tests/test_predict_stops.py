"""`kerascope predict` stopped mid-run keeps the rows done, as classify keeps its results, and
says what it computes in only once the model has passed its precision's check."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main
from tests.test_cli_messages import _SLOW_CLI  # the CLI, each labelled image made slow
from tests.test_evaluate import untrained_run

CLASSES = ["cat", "dog"]
N = 200


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("run"), CLASSES)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "one.png")
    source = (folder / "one.png").read_bytes()
    names = [str(folder / f"img{i:03d}.png") for i in range(N)]
    for name in names:
        Path(name).write_bytes(source)
    return names


def _stopped_predict(run_dir: Path, images: list[str], tmp_path: Path, output: str,
                     stop: int = signal.SIGINT) -> tuple[int, str, str]:  # fmt: skip
    marker = tmp_path / "started"
    command = [sys.executable, "-c", _SLOW_CLI, str(marker), "predict", str(run_dir), *images,
               "-o", output, "--batch-size", "8"]  # fmt: skip
    proc = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "predict never got going"
            time.sleep(0.05)
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _kept(err: str, output: str, how: str = "interrupted", tail: str = "") -> int:
    found = re.search(how + rf" after (\d+) of {N} images; (.*) holds those (\d+) only"
                      + re.escape(tail) + "$", err.strip().splitlines()[-1])  # fmt: skip
    assert found and found.group(1) == found.group(3), err
    assert found.group(2) == output, err
    return int(found.group(1))


@pytest.mark.slow  # a CLI process each (5-10 s)
def test_ctrl_c_writes_the_rows_done_to_the_csv(run_dir, images, tmp_path):
    """Before: "predicting: 270/900" then "kerascope: interrupted", exit 130, no CSV."""
    earlier = tmp_path / "pred.csv"
    earlier.write_text("previous rows\n")  # kept: the stopped run writes beside it
    out = tmp_path / "pred-1.csv"
    code, _, err = _stopped_predict(run_dir, images, tmp_path, str(earlier))
    assert code == 130 and "Traceback" not in err, err
    n = _kept(err, f"'{out}'", tail=f" ('{earlier}' is kept as it was)")
    assert earlier.read_text() == "previous rows\n"
    assert 24 <= n < N
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["path"] for r in rows] == images[:n]  # complete rows, in order, nothing else
    assert all(r["label"] in CLASSES and not r["error"] for r in rows)
    assert out.read_text().endswith("\n")
    assert not list(tmp_path.glob(".*partial*"))  # written atomically: no temp file left


@pytest.mark.slow
def test_sigterm_writes_the_rows_done_as_json(run_dir, images, tmp_path):
    out = tmp_path / "pred.json"
    code, _, err = _stopped_predict(run_dir, images, tmp_path, str(out), signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    n = _kept(err, f"'{out}'", "stopped by SIGTERM")
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == images[:n]
    assert all(r["label"] in CLASSES and 0 <= r["probability"] <= 1 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["-", "/proc/self/fd/1"])
def test_ctrl_c_writes_the_rows_done_to_standard_output(run_dir, images, tmp_path, target):
    """A descriptor is a stream, written in place (the review found its rows sent to a new
    '/proc/self/fd/1-1' as if it were a file to keep)."""
    code, out, err = _stopped_predict(run_dir, images, tmp_path, target)
    assert code == 130 and "Traceback" not in err, err
    n = _kept(err, "standard output" if target == "-" else f"'{target}'")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == images[:n]


def test_int8_refused_before_any_precision_line(run_dir, images, monkeypatch, capsys):
    """Before: "computing in int8 (a calibrated int8 graph that met the float32 agreement
    bound) on the keras engine", then the refusal: the first line claimed what never ran."""
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    monkeypatch.delenv("KERASCOPE_PRECISION", raising=False)
    out = Path(images[0]).parent / "never.csv"
    code = main(["predict", str(run_dir), images[0], "-o", str(out), "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == 2 and "keras engine has no int8" in err, err
    assert "computing in" not in err and not out.exists()


def test_int8_missing_the_bound_is_refused_before_any_precision_line(
    run_dir, images, monkeypatch, capsys
):
    """The stress tester's case: a graph that misses the agreement bound."""
    from kerascope import quantize

    monkeypatch.setattr(quantize, "CALIBRATION_IMAGES", 16)
    monkeypatch.setattr(quantize, "CHECK_IMAGES", 24)
    monkeypatch.setattr(quantize, "LADDER", ((),))
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # missed by any graph
    for name in ("KERASCOPE_ENGINE", "KERASCOPE_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    code = main(["predict", str(run_dir), images[0], "-o", "-", "--precision", "int8"])
    captured = capsys.readouterr()
    assert code == 2 and "misses the bound" in captured.err, captured.err
    assert "computing in" not in captured.err and captured.out == ""


def test_float32_asked_says_the_engine_that_runs(run_dir, images, monkeypatch, capsys):
    """The line names the engine the job runs on (before: none, whatever ran)."""
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    code = main(["predict", str(run_dir), images[0], "-o", "-", "--precision", "float32"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.strip().splitlines()
    assert lines[0] == "kerascope: computing in float32 on the keras engine", lines
    assert lines[-1].startswith("kerascope: wrote 1 row to standard output: 1 ")
    assert [r["path"] for r in csv.DictReader(io.StringIO(captured.out))] == images[:1]


@pytest.mark.slow
def test_a_stopped_classify_keeps_an_earlier_output_file(run_dir, images, tmp_path):
    """As predict: before, a Ctrl-C replaced a complete earlier -o file by the partial rows."""
    earlier = tmp_path / "classes.csv"
    earlier.write_text("earlier results\n")
    marker = tmp_path / "started"
    command = [sys.executable, "-c", _SLOW_CLI, str(marker), "classify", *images, "--model",
               str(run_dir), "-o", str(earlier), "--batch-size", "8"]  # fmt: skip
    proc = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert earlier.read_text() == "earlier results\n"
    new, old = re.escape(str(tmp_path / "classes-1.csv")), re.escape(str(earlier))
    said = rf"'{new}' holds those \d+ only \('{old}' is kept as it was\)$"
    assert re.search(said, err, re.MULTILINE) and f"result(s) to {tmp_path}" in err, err
    assert (tmp_path / "classes-1.csv").is_file()
