"""The text `evaluate` prints: columns aligned by terminal width (CJK class names take two
columns a character), and counts said in the singular for one."""

from __future__ import annotations

import unicodedata

import numpy as np

from kerascope.evaluation import ClassScores, Evaluation, format_confusion, metrics_from
from kerascope.evaluation_text import display_width, pad


def _evaluation(truth: list[int], guess: list[int], classes: list[str]) -> Evaluation:
    m = metrics_from(np.array(truth), np.array(guess), classes)
    return Evaluation(n=m["n"], accuracy=m["accuracy"], macro_f1=m["macro_f1"],
                      per_class={c: ClassScores(**v) for c, v in m["per_class"].items()},
                      classes=m["classes"], confusion=m["confusion"])  # fmt: skip


def _columns(line: str) -> int:
    """How many terminal columns ``line`` takes (an independent count: wide = 2)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def _cell_ends(line: str) -> list[int]:
    """The terminal column where each space-separated cell of ``line`` ends."""
    ends, column, inside = [], 0, False
    for c in line:
        column += 2 if unicodedata.east_asian_width(c) in "WF" else 1
        if c != " ":
            inside = True
        elif inside:
            ends.append(column - 1)
            inside = False
    return ends + ([column] if inside else [])


def test_confusion_table_aligns_cjk_class_names_by_display_width():
    """Before: widths were ``len``: 长颈鹿 (3 characters, 6 columns) pushed its row and every
    header cell 3 columns right of the rows of 猫 and 狗."""
    classes = ["猫", "狗", "长颈鹿"]
    result = _evaluation([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], classes)
    lines = format_confusion(result).splitlines()
    matrix, scores = lines[:4], lines[5:9]
    assert matrix[0].split()[-3:] == classes and [m.split()[0] for m in matrix[1:]] == classes
    assert len({_columns(line) for line in matrix}) == 1, matrix
    assert len({_columns(line) for line in scores}) == 1, scores
    # each count sits right under its class name: the cells end in the same columns
    header_ends = _cell_ends(matrix[0])[-3:]
    for row in matrix[1:]:
        assert _cell_ends(row)[-3:] == header_ends, matrix
    assert [line.split()[0] for line in scores] == ["class", *classes]


def test_display_width_and_pad():
    assert [display_width(t) for t in ("cat", "猫", "长颈鹿", "ｃａｔ", "e\u0301")] == [
        3,
        2,
        6,
        6,
        1,
    ]
    assert pad("猫", 4) == "猫  " and pad("猫", 4, right=True) == "  猫"
    assert pad("长颈鹿", 4) == "长颈鹿"  # never cut


def test_one_image_is_said_in_the_singular():
    """Before: "accuracy 1.0000 on 1 images"."""
    text = format_confusion(_evaluation([0], [0], ["cat", "dog"]))
    assert "accuracy 1.0000 on 1 image\n" in text
    assert "on 2 images" in format_confusion(_evaluation([0, 1], [0, 1], ["cat", "dog"]))
