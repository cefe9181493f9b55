"""File and class names cannot drive the terminal: control characters are printed escaped.

A name holding ``\\x1b[2J`` (clear the screen) or ``\\x1b]2;...\\x07`` (set the window title)
reaches the classify table, evaluate's confusion matrix, notes and errors as the visible text
``\\x1b[2J``; ordinary Unicode stays as it is, and files written with ``-o`` keep the exact name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kerascope.cli import main
from tests.test_evaluate import _images, untrained_run

CLEAR = "\x1b[2J"
TITLE = "\x1b]2;pwned\x07"
ESC = "\x1b"


def shown(text: str) -> str:
    """How ``text`` must appear on the terminal: its control characters as Python escapes."""
    return text.encode("unicode_escape").decode("ascii").replace("\\\\", "\\")


def test_printable_escapes_controls_and_keeps_unicode():
    from kerascope.output import printable

    assert printable(f"a{CLEAR}b{TITLE}") == "a\\x1b[2Jb\\x1b]2;pwned\\x07"
    assert printable("line\nfeed\rtab\t\x7f\x9b") == "line\\nfeed\\rtab\\t\\x7f\\x9b"
    assert printable("gpj.\u202eexe") == "gpj.\\u202eexe"  # a bidi override cannot reorder
    assert printable("kätzchen 猫 🐈 naïve — “x”") == "kätzchen 猫 🐈 naïve — “x”"


def test_classify_table_and_notes_show_escapes_json_keeps_name(
    photo_paths, tmp_path, monkeypatch, capsys, shared_zoo_models
):
    monkeypatch.chdir(tmp_path)
    name = f"cat{CLEAR}{TITLE} kätzchen.png"
    shutil.copy(photo_paths["chelsea"], tmp_path / name)
    empty = f"bad{CLEAR}.jpg"
    (tmp_path / empty).write_bytes(b"")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / f"notes{TITLE}.txt").write_text("not a picture")
    code = main(["classify", name, empty, "more", "-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1  # the empty file
    assert ESC not in out and ESC not in err and "\x07" not in out + err
    assert f"cat{shown(CLEAR)}{shown(TITLE)} kätzchen.png" in out
    assert "tiger_cat" in out or "tabby" in out  # the cat is still classified
    assert f"bad{shown(CLEAR)}.jpg" in out and "empty file" in out  # the error row
    assert f"notes{shown(TITLE)}.txt" in err  # the note of skipped files

    code = main(["classify", name, "-k", "1", "--format", "json", "-o", "out.json"])
    assert code == 0
    rows = json.loads(Path("out.json").read_text())
    assert rows[0]["image"] == name  # the file holds the exact name, escaped by JSON itself
    assert ESC not in capsys.readouterr().err


def test_missing_inputs_and_one_line_errors_show_escapes(photo_paths, tmp_path, monkeypatch,
                                                         capsys, shared_zoo_models):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["classify", f"gone{CLEAR}.png"]) == 1  # a row for the missing input
    out, err = capsys.readouterr()
    assert ESC not in out + err and f"gone{shown(CLEAR)}.png" in out
    code = main(["classify", str(photo_paths["chelsea"]), "-m", f"no_such_net{TITLE}"])
    out, err = capsys.readouterr()
    assert code == 2 and ESC not in out + err and f"no_such_net{shown(TITLE)}" in err


@pytest.fixture(scope="module")
def escape_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    classes = [f"disc{CLEAR}", f"plain{TITLE}"]
    run = untrained_run(tmp_path_factory.mktemp("run"), classes)
    data = tmp_path_factory.mktemp("data")
    for k, (kind, name) in enumerate(zip(("disc", "plain"), classes, strict=True)):
        _images(data / name, kind, 3, seed=k)
    return run, data, classes


def test_evaluate_confusion_matrix_shows_escaped_class_names(escape_run, tmp_path, capsys):
    import warnings

    run, data, classes = escape_run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(run), str(data), "-o", str(tmp_path / "eval")]) == 0
    # The pictures show the names escaped too (before: "Glyph 27 missing from font").
    assert not [w for w in caught if "Glyph" in str(w.message)]
    out, err = capsys.readouterr()
    assert ESC not in out and ESC not in err and "\x07" not in out
    for name in classes:
        assert shown(name) in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["classes"] == classes  # the file keeps the exact names


def test_csv_on_a_terminal_shows_escapes_and_a_pipe_gets_exact_names(monkeypatch, capsys):
    import io
    import os
    import pty

    from kerascope import output
    from kerascope.classification import ImageResult, Prediction

    name = f"cat{CLEAR}{TITLE}.png"
    results = [ImageResult(name, [Prediction(1, 281, "n02123045", f"tabby{CLEAR}", 0.5)])]
    output.write_results(results, "csv", None)  # captured: not a terminal, like a pipe
    piped = capsys.readouterr().out
    assert name in piped and f"tabby{CLEAR}" in piped

    leader, follower = pty.openpty()
    terminal = io.TextIOWrapper(os.fdopen(follower, "wb", buffering=0), encoding="utf-8")
    monkeypatch.setattr("sys.stdout", terminal)
    try:
        output.write_results(results, "csv", None)
        terminal.flush()
        shown_text = os.read(leader, 1 << 16).decode()
    finally:
        terminal.close()
        os.close(leader)
    assert ESC not in shown_text and "\x07" not in shown_text
    assert f"cat{shown(CLEAR)}{shown(TITLE)}.png" in shown_text
    assert f"tabby{shown(CLEAR)}" in shown_text
