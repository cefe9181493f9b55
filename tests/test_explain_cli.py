"""``kerascope explain`` end to end on a real photo: --score prints the numbers the API computes,
--compare writes one grid with a panel per method and ranks them; bad options are one line."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main

_NUMBER = r"[-+]?\d+\.\d+%?"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_score_prints_the_faithfulness_the_api_computes(photo_paths, gap_model, tmp_path, capsys):
    """On a small saved model (as --compare's test): that the printed numbers are the API's
    is the point, not what Lite0 scores (tests/test_faithfulness.py: the metrics on Lite0)."""
    import kerascope

    path = photo_paths["chelsea"]
    argv = ["explain", str(path), "-o", str(tmp_path), "--score", "--model", str(gap_model)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    with Image.open(tmp_path / "chelsea-output.jpg") as picture:
        assert picture.size[0] > 0  # the usual picture is still written
    for title in ("deletion AUC", "insertion AUC", "ROAD MoRF", "ROAD LeRF", "avg drop"):
        assert title in " ".join(out.split())
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "deletion AUC" in line)
    row = next(cells for line in lines[header + 1 :] if len(cells := _cells(line)) > 2)
    model = kerascope.load_model(str(gap_model))
    explained = kerascope.explain(path, model=model)  # --fit whole, as the CLI's default
    assert row[1] == explained.class_name
    numbers = row[2:]  # deletion, insertion, MoRF, LeRF, ROAD, drop, increase (0 or 1)
    assert all(re.fullmatch(_NUMBER, n) for n in numbers[:-1]) and numbers[-1] in ("0", "1")
    expected = kerascope.faithfulness(path, explained, model=model,
                                      metrics=["deletion", "insertion"])  # fmt: skip
    # One input and one map (issue 20): the same numbers, as printed (3 decimals).
    assert numbers[0] == f"{expected.deletion:.3f}"
    assert numbers[1] == f"{expected.insertion:.3f}"


def _cells(line: str) -> list[str]:
    """The cells of one rich table row (empty for borders and wrapped continuation lines)."""
    cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
    return cells if all(cells[1:2]) else []


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _panels(grid: np.ndarray) -> int:
    """Photo panels in a grid picture: blocks that are photo in full, between background gaps
    (columns) and text lines (rows with few non-background pixels)."""
    busy = np.abs(grid.astype(np.int16) - grid[2, 2].astype(np.int16)).max(axis=2) > 40
    columns = _runs(busy.mean(axis=0) > 0.05)
    rows = _runs(busy.mean(axis=1) > 0.6)
    blocks = [busy[r0:r1, c0:c1].mean() > 0.6 for r0, r1 in rows for c0, c1 in columns]
    return sum(blocks)


@pytest.fixture(scope="module")
def gap_model(tmp_path_factory):
    """A small CNN with a GAP -> Dense head (so every method runs: CAM needs one) and ReLUs
    (guided backpropagation needs them), saved as a ``.keras`` file for ``--model``. Seeded:
    the same weights every session, so the methods' compiled functions come from the JAX cache."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((48, 48, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5, activation="softmax", name="predictions")(x)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny_gap").save(path)
    return path


def test_compare_writes_one_grid_with_a_panel_per_method_and_ranks_them(
    photo_paths, gap_model, tmp_path, capsys
):
    """The command's work on a small saved GAP model: the grid, its panels and the ranking
    table are the point. (On Lite0 this test took 74 s, Score-CAM alone 1280 forward passes;
    every method on Lite0 is run by tests/test_cam_methods.py's sanity check, and the scoring
    by tests/test_faithfulness.py.)"""
    from kerascope.cam.methods import METHODS

    path = photo_paths["chelsea"]
    argv = ["explain", str(path), "-o", str(tmp_path), "--compare", "--metric", "deletion",
            "--model", str(gap_model)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    grid_path = tmp_path / "chelsea-compare.jpg"
    assert f"wrote {grid_path}" in " ".join(captured.err.split())
    assert not (tmp_path / "chelsea-output.jpg").exists()
    with Image.open(grid_path) as picture:
        grid = np.asarray(picture.convert("RGB"))
    assert _panels(grid) == len(METHODS)  # a GAP + Dense head: every method runs
    out = captured.out
    assert "ranked by deletion AUC (lower is better)" in " ".join(out.split())
    ranked = []
    for line in out.splitlines():
        cells = _cells(line)
        if len(cells) > 2 and cells[0].isdigit():
            ranked.append((cells[1].split()[0], float(cells[2])))
    assert sorted(name for name, _ in ranked) == sorted(METHODS)
    deletions = [value for _, value in ranked]
    assert deletions == sorted(deletions)


def test_help_lists_every_method_with_its_cost(capsys):
    from kerascope.cam.methods import METHODS

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps lines
    for name, cls in METHODS.items():
        assert f"{name} ({cls.cost}" in text
    failing = sum(1 for cls in METHODS.values() if not getattr(cls, "sanity", True))
    assert text.count("fails the randomisation sanity check") == failing
    assert "(default: gradcam)" in text and "(default: road_morf" in text


@pytest.mark.parametrize(
    "argv, named",
    [
        (["explain", "a.png", "--method", "nope"], ["--method", "'nope'", "'scorecam'"]),
        (["explain", "a.png", "--metric", "auc"], ["--metric", "'auc'", "'road_morf'"]),
    ],
)
def test_bad_choices_are_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _one_line(capsys.readouterr().err)
    for text in named:
        assert text in line


def test_metric_without_compare_is_one_line_before_any_work(tmp_path, capsys):
    missing = tmp_path / "none.png"  # never read: the check comes first
    assert main(["explain", str(missing), "--metric", "deletion"]) == 2
    assert "add --compare" in _one_line(capsys.readouterr().err)


def test_a_class_for_a_class_independent_method_is_refused(tmp_path, capsys):
    """Before: eigencam --class tabby drew the top class's map, labelled "tabby"."""
    import kerascope

    missing = tmp_path / "none.png"  # never read: the check comes first
    assert main(["explain", str(missing), "--method", "eigencam", "--class", "tabby"]) == 2
    assert "--class: eigencam is class-independent" in _one_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="eigencam is class-independent"):
        kerascope.explain(str(missing), method="eigencam", target=281)


def test_building_the_parser_imports_no_cam_code():
    """Method costs and the default colormap reach --help lazily: other commands stay fast."""
    code = "import sys, kerascope.cli as c; c.build_parser(); print('kerascope.cam' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
