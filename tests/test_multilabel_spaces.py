"""Space-separated (fastai-style) label CSVs: refused or warned about, never trained silently
as one label per combination; labels with spaces in their names still read whole."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kerascope.data.folders import DatasetError
from kerascope.data.multilabel import read_label_csv


def _csv(root: Path, rows: list[str]) -> Path:
    """A label CSV over empty stand-in files (the reader checks only that they exist)."""
    (root / "images").mkdir(exist_ok=True)
    lines = ["path,labels"]
    for i, labels in enumerate(rows):
        (root / "images" / f"{i:03d}.jpg").write_bytes(b"x")
        lines.append(f"images/{i:03d}.jpg,{labels}")
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fastai_space_separated_csv_is_refused_in_one_line(tmp_path, caplog):
    csv = _csv(tmp_path, ["cat", "dog", "cat dog", "dog", "cat dog"])
    with pytest.raises(DatasetError) as caught:
        read_label_csv(csv)
    message = str(caught.value)
    assert "\n" not in message and str(csv) in message
    assert "row 4: label 'cat dog'" in message and "separate labels with ;" in message


def test_labels_with_spaces_in_their_names_still_read_whole(tmp_path, caplog):
    csv = _csv(tmp_path, ["golden retriever;cat", "golden retriever", "cat", "tabby cat;cat"])
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        table = read_label_csv(csv)
    assert table.labels == ["cat", "golden retriever", "tabby cat"]
    assert table.targets.tolist()[0] == [1.0, 1.0, 0.0]
    assert not caplog.records  # ; is used and 'golden'/'retriever'/'tabby' are no labels


def test_spaced_combination_in_a_file_that_uses_semicolons_is_kept_with_a_warning(tmp_path, caplog):
    csv = _csv(tmp_path, ["cat;dog", "cat", "dog", "cat dog"])
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        table = read_label_csv(csv)
    assert table.labels == ["cat", "cat dog", "dog"]
    [record] = caplog.records
    assert "row 5: label 'cat dog'" in record.getMessage() and str(csv) in record.getMessage()


def test_single_labels_with_spaces_and_no_separator_anywhere_warn_once(tmp_path, caplog):
    csv = _csv(tmp_path, ["golden retriever", "labrador retriever", "golden retriever"])
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        table = read_label_csv(csv)
    assert table.labels == ["golden retriever", "labrador retriever"]
    [record] = caplog.records
    assert "no row names two labels" in record.getMessage()


def test_a_trained_runs_labels_hint_the_separator_for_a_spaced_row(tmp_path):
    csv = _csv(tmp_path, ["cat", "cat dog"])
    with pytest.raises(DatasetError, match=r"label 'cat dog' is not one .*\(cat;dog\)"):
        read_label_csv(csv, labels=["cat", "dog"])


def test_train_refuses_a_space_separated_csv_before_writing(tmp_path, capsys):
    from kerascope.cli import main

    csv = _csv(tmp_path, ["cat", "dog", "cat dog"])
    assert main(["train", str(csv), "-o", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "label 'cat dog'" in err and "separate labels with ;" in err
    assert not (tmp_path / "run").exists()
