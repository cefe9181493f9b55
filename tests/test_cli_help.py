"""Every ``--help`` shows the defaults (README), and a usage error points to the help that
lists the command's options."""

from __future__ import annotations

import os

import pytest

from kerascope.cli import main

# --- --help shows the defaults ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command, defaults",
    [
        (
            "classify",
            [
                "(default: 5)",
                "(default: 0.0)",
                "(default: from -o's .json or .csv suffix, else table)",
                "(default: 32 on a CPU, 256 on a GPU or TPU for 224-px models, fewer for larger "
                "inputs)",
            ],
        ),
        ("explain", ["(default: 0.4)", "(default: viridis)", "(default: gradcam)", "(default: .)"]),
        (
            "video",
            [
                "(default: side)",
                "(default: 1)",
                "(default: 16 on a CPU, 128 on a GPU or TPU for 224-px",
            ],
        ),
        ("models", ["(default: list)", "(default: table)"]),
    ],
)
def test_help_shows_every_default(command, defaults, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in defaults:
        assert text in out


def _commands(parser, prefix=()):
    """Every command and sub-command parser, by its words (batch explain included)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_option_with_a_default_says_it_in_help():
    """README: "Every --help shows the defaults". Before: a default of 0 (--seed) was taken
    for an off switch, and batch's options without help text showed nothing."""
    import argparse

    from kerascope.cli import build_parser

    missing = []
    for words, parser in _commands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            off = any(action.default is v for v in (None, False, True, argparse.SUPPRESS))
            if not action.option_strings or off or isinstance(action, argparse._HelpAction):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            if "default" not in shown:
                missing.append(f"{' '.join(words)} {action.option_strings[0]}")
    assert not missing, missing


@pytest.mark.parametrize(
    ("command", "shown"),
    [("train", "(default: 0.2)"), ("evaluate", "(default: auto)"),
     ("predict", "predictions-1.csv"), ("features", "(default: features.h5)"),
     ("augment", "(default: 20)")],
)  # fmt: skip
def test_every_help_shows_the_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert shown in text
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    ("argv", "helped"),
    [(["augment", "a.png", "b.png"], "kerascope augment --help"),
     (["batch", "classify", "x", "-o", "y", "--bogus"], "kerascope batch classify --help")],
)  # fmt: skip
def test_an_unrecognized_argument_points_to_its_commands_help(argv, helped, capsys):
    """argparse reports it from the top parser: the hint said `kerascope --help`, which does
    not list the command's options."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"(see {helped})" in capsys.readouterr().err


def test_inputs_may_follow_the_options(tmp_path, capsys, monkeypatch):
    """Before: `classify a.png -k 1 b.png` was "unrecognized arguments: b.png"."""
    import json

    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / name)
    argv = ["classify", str(tmp_path / "a.png"), "-k", "1", str(tmp_path / "b.png"), "-f", "json"]
    assert main(argv) == 0
    shown = [row["image"] for row in json.loads(capsys.readouterr().out)]
    assert [os.path.basename(s) for s in shown] == ["a.png", "b.png"]
    # and a name that starts with '-' after '--' (README), with an input before the options
    (tmp_path / "a.png").rename(tmp_path / "-a.png")
    monkeypatch.chdir(tmp_path)
    assert main(["classify", "b.png", "-k", "1", "-f", "json", "--", "-a.png"]) == 0
    assert [row["image"] for row in json.loads(capsys.readouterr().out)] == ["b.png", "-a.png"]
    assert main(["classify", "b.png", "-k", "1", "b.png", "-f", "json", "--", "-a.png"]) == 0
    assert [row["image"] for row in json.loads(capsys.readouterr().out)] == ["b.png", "-a.png"]


def test_the_format_follows_the_output_files_suffix(tmp_path, capsys):
    """Before: `classify a.png -o r.json` wrote a drawn table into r.json."""
    import csv
    import json

    from PIL import Image

    Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / "a.png")
    for name in ("r.json", "r.CSV", "r.txt"):
        assert (
            main(["classify", str(tmp_path / "a.png"), "-k", "2", "-o", str(tmp_path / name)]) == 0
        )
    assert len(json.loads((tmp_path / "r.json").read_text())[0]["predictions"]) == 2
    assert len(list(csv.DictReader((tmp_path / "r.CSV").open()))) == 2
    assert "probability" in (tmp_path / "r.txt").read_text().splitlines()[1]  # a table
