"""Silence (issue 24, item 5): piped or logged, a long command says how far it got in plain
lines on stderr (no bar escape codes), and ``predict`` says what it labelled and where.

Under pytest stderr is not a terminal, as in a pipe. `output.PLAIN_EVERY_S` is set to 0 so
every step prints: the lines do not depend on how fast this machine is."""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from kerascope import output
from kerascope.cli import main
from tests.test_evaluate import untrained_run

CLASSES = ["cat", "dog"]
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("run"), CLASSES)


@pytest.fixture()
def folder(tmp_path, photo_paths) -> Path:
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in PHOTOS:
        shutil.copy(photo_paths[name], pics / photo_paths[name].name)
    return pics


def _counts(err: str, label: str) -> list[tuple[int, int]]:
    """(done, total) of each plain progress line with ``label``."""
    pattern = rf"^kerascope: {re.escape(label)}: (\d+)/(\d+)(, [\d.]+/s)?, \d+ s( \(done\))?$"
    return [(int(m[1]), int(m[2])) for m in re.finditer(pattern, err, re.M)]


def test_piped_folder_classify_prints_plain_progress_lines(run_dir, folder, monkeypatch, capsys):
    monkeypatch.setattr(output, "PLAIN_EVERY_S", 0.0)
    assert main(["classify", str(folder), "-m", str(run_dir), "-f", "csv"]) == 0
    captured = capsys.readouterr()
    n = len(PHOTOS)
    assert _counts(captured.err, "classifying") == [*((k, n) for k in range(1, n)), (n, n)]
    assert captured.err.rstrip().endswith("(done)") and "\x1b" not in captured.err
    assert len(list(csv.DictReader(captured.out.splitlines()))) == n * 2  # the results: stdout


def test_a_piped_job_shorter_than_the_interval_prints_no_progress(run_dir, folder, monkeypatch,
                                                                  capsys):  # fmt: skip
    assert output.PLAIN_EVERY_S >= 5  # the default: a quick job stays quiet
    monkeypatch.setattr(output, "PLAIN_EVERY_S", 3600.0)  # "quick" on a loaded machine too
    assert main(["classify", str(folder), "-m", str(run_dir), "-f", "csv"]) == 0
    assert "classifying" not in capsys.readouterr().err


def test_piped_folder_explain_prints_plain_progress_lines(run_dir, folder, tmp_path, monkeypatch,
                                                          capsys):  # fmt: skip
    monkeypatch.setattr(output, "PLAIN_EVERY_S", 0.0)
    assert main(["explain", str(folder), "-m", str(run_dir), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert _counts(err, "explaining")[:3] == [(1, 4), (2, 4), (3, 4)]
    assert len(list((tmp_path / "out").glob("*-output.jpg"))) == len(PHOTOS)


@pytest.mark.slow  # 26 s
def test_piped_compare_counts_methods_as_they_finish(run_dir, folder, tmp_path, monkeypatch,
                                                     capsys):  # fmt: skip
    from kerascope.cam.methods import METHODS

    monkeypatch.setattr(output, "PLAIN_EVERY_S", 0.0)
    two = [str(p) for p in sorted(folder.iterdir())[:2]]
    assert main(["explain", *two, "-m", str(run_dir), "-o", str(tmp_path / "cmp"),
                 "--compare"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    counts = _counts(captured.err, "comparing (image x method)")
    total = 2 * len(METHODS)
    assert counts[0] == (1, total) and counts[-1] == (total, total)
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)
    assert captured.out.count("ranked by") == 2  # both rankings on stdout, after the work


def test_predict_says_how_many_of_each_label_and_where(run_dir, folder, tmp_path, monkeypatch,
                                                       capsys):  # fmt: skip
    monkeypatch.setattr(output, "PLAIN_EVERY_S", 0.0)
    out = tmp_path / "labels.csv"
    assert main(["predict", str(run_dir), str(folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    rows = list(csv.DictReader(out.open(newline="")))
    counts = Counter(r["label"] for r in rows).most_common()  # ties: in the order first met
    assert {c for c, _ in counts} <= set(CLASSES)
    said = ", ".join(f"{n} {c}" for c, n in counts)
    assert f"kerascope: wrote {len(PHOTOS)} rows to {out}: {said}\n" in err
    assert _counts(err, "predicting")[:3] == [(1, 4), (2, 4), (3, 4)]


def test_predict_summary_names_the_top_labels_and_the_rest():
    from kerascope.prediction import PredictedLabel, summary

    rows = [PredictedLabel(f"{k}.png", label, 0, 0.9) for k, label in
            enumerate("a a a b b c d e f g".split())]  # fmt: skip
    rows.append(PredictedLabel("bad.png", error="cannot read"))
    assert summary(rows, shown=3) == "3 a, 2 b, 1 c, 4 in 4 other classes"
    assert summary(rows[:5]) == "3 a, 2 b"
    assert summary(rows[-1:]) == ""


def test_piped_video_prints_plain_progress_lines(run_dir, photo_paths, tmp_path, monkeypatch,
                                                 capsys):  # fmt: skip
    from tests.test_video import clip_frames, write_clip

    clip = write_clip(tmp_path / "pan.mp4", clip_frames(photo_paths)[:10])
    monkeypatch.setattr(output, "PLAIN_EVERY_S", 0.0)
    argv = ["video", str(clip), "-m", str(run_dir), "-o", str(tmp_path / "out.mp4"), "-b", "4"]
    assert main(argv) == 0
    # frames are counted as they are encoded, as soon as their drawing is done: the lines
    # rise while the job runs (a batch of 4 is drawn while the next 4 are read) and end at 10
    counts = _counts(capsys.readouterr().err, "video frames")
    done = [d for d, _ in counts]
    assert len(counts) >= 2 and all(t == 10 for _, t in counts) and done[-1] == 10
    assert done == sorted(set(done)) and done[0] < 10
