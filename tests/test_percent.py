"""Probabilities under 0.1 % never print "0.0%" (issue 20, "Also"): one formatting function,
`kerascope.output.percent`, for every table, picture label and title that shows one.

Before: classify's table printed 0.0004 (four decimals), explain's picture label "airliner
0.0%", --compare's title and the video label the same, top-losses tiles "0.00"."""

from __future__ import annotations

import re

import pytest

from kerascope import output
from kerascope.cli import main


@pytest.mark.parametrize(
    ("p", "shown"),
    [(0.385, "38.5%"), (1.0, "100.0%"), (0.001, "0.1%"), (0.0004, "0.04%"), (0.00012, "0.01%"),
     (0.00009, "<0.01%"), (1e-12, "<0.01%"), (0.0, "0%"), (float("nan"), "n/a")],
)  # fmt: skip
def test_percent(p, shown):
    assert output.percent(p) == shown


def test_classify_table_shows_small_probabilities_as_such(photo_paths, capsys, shared_zoo_models):
    """Chelsea's 30th class has ~0.04 % on the real Lite0: the table says so, in percent."""
    assert main(["classify", str(photo_paths["chelsea"]), "-k", "30"]) == 0
    cells = re.findall(r"(<?\d+(?:\.\d+)?%)\s*[┃│|]?\s*$", capsys.readouterr().out, re.M)
    assert len(cells) == 30, cells
    assert "0.0%" not in cells and cells[0].endswith("%")
    small = [c for c in cells if c.startswith("<") or float(c[:-1]) < 0.1]
    assert small and all(re.fullmatch(r"0\.0[1-9]%|<0\.01%", c) for c in small), small


def test_explain_label_and_table_of_an_unlikely_class(photo_paths, tmp_path, monkeypatch, capsys):
    """Explaining a class the model gives almost nothing (an airliner in the cat photo): the
    picture's label and the printed table give its probability, not 0.0%."""
    import kerascope.cam.save as save

    labels = []
    real = save.mark_empty

    def spy(label, heatmap):  # the label as drawn on the picture
        labels.append(label)
        return real(label, heatmap)

    monkeypatch.setattr(save, "mark_empty", spy)
    argv = ["explain", str(photo_paths["chelsea"]), "--class", "airliner", "-o", str(tmp_path)]
    assert main(argv) == 0
    (label,) = labels
    shown = re.fullmatch(r"airliner (\S+) \(gradcam\): map shape only", label)  # (under 1 %)
    assert shown and shown[1] != "0.0%" and re.fullmatch(r"0\.0[1-9]%|<0\.01%", shown[1]), label
    assert shown[1] in capsys.readouterr().out  # the table: the same text
    assert list(tmp_path.glob("*-output.jpg"))
