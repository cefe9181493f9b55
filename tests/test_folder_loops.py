"""A folder link back into a folder it is inside (``cat/loop -> ..``, ``loopdir/self ->
../loopdir``) is said in one line naming the link and where it points, and left out, wherever
folders are walked: classify/predict inputs, recursive globs, train's scan, evaluate's class
folders. Before, it was walked once in silence: ``classify d/cat`` classified d/coffee's
pictures through the link, train made a class of the whole dataset from ``d/self``, and
evaluate scored the coffee as a cat."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kerascope.data.folders import scan_dataset
from kerascope.images.inputs import expand_inputs, loop_note


@pytest.fixture
def looped(tmp_path, photo_paths) -> Path:
    """``d/cat/{chelsea,astronaut}.png``, ``d/coffee/{coffee.png,rocket.jpg}`` and a link
    ``d/cat/loop -> ../`` (``mkdir -p d/cat; ln -s ../ d/cat/loop``)."""
    root = tmp_path / "d"
    for cls, names in (("cat", ("chelsea", "astronaut")), ("coffee", ("coffee", "rocket"))):
        (root / cls).mkdir(parents=True)
        for name in names:
            shutil.copy(photo_paths[name], root / cls)
    os.symlink("../", root / "cat" / "loop")
    return root


def _loop_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "a link loop" in r.getMessage()]


def test_a_link_to_the_folder_above_is_a_loop_said_once_and_not_walked(looped):
    found = expand_inputs([looped / "cat"])
    assert [Path(p).name for p in found.paths] == ["astronaut.png", "chelsea.png"]
    assert found.cycles == [(str(looped / "cat" / "loop"), str(looped.resolve()))]
    found = expand_inputs([looped])  # from above: the same link, the same line
    assert len(found.paths) == 4 and found.cycles == [
        (str(looped / "cat" / "loop"), str(looped.resolve()))
    ]


def test_a_link_to_itself_and_a_loop_through_a_folder_elsewhere(tmp_path, photo_paths):
    loopdir = tmp_path / "loopdir"
    loopdir.mkdir()
    shutil.copy(photo_paths["chelsea"], loopdir)
    os.symlink("../loopdir", loopdir / "self")
    found = expand_inputs([loopdir])
    assert [Path(p).name for p in found.paths] == ["chelsea.png"]
    assert found.cycles == [(str(loopdir / "self"), str(loopdir.resolve()))]
    # a link out of the tree is no loop and is followed; one back in from there is a loop
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photo_paths["coffee"], other)
    os.symlink(other, loopdir / "out")
    os.symlink(loopdir, other / "back")
    found = expand_inputs([loopdir])
    assert sorted(Path(p).name for p in found.paths) == ["chelsea.png", "coffee.png"]
    assert sorted(link for link, _ in found.cycles) == [
        str(loopdir / "out" / "back"),
        str(loopdir / "self"),
    ]


def test_classify_inputs_say_each_loop_and_keep_the_pictures_below_it(looped, caplog):
    from kerascope.sources import normalise_inputs

    caplog.set_level("WARNING", logger="kerascope")
    sources, skipped, missing = normalise_inputs([str(looped / "cat")])
    assert [Path(s).name for s in sources] == ["astronaut.png", "chelsea.png"]
    assert (skipped, missing) == ([], [])
    assert _loop_lines(caplog) == [loop_note(str(looped / "cat" / "loop"), str(looped.resolve()))]
    assert _loop_lines(caplog)[0] == (
        f"skipped '{looped / 'cat' / 'loop'}': a link to '{looped.resolve()}', a folder it is "
        "inside (a link loop)"
    )


def test_a_recursive_glob_goes_round_no_loop(looped):
    """Python's ``glob('d/**/*.png')`` follows the link 40 times round: each picture came
    40 times."""
    found = expand_inputs([str(looped / "**" / "*.png")])
    assert sorted(Path(p).name for p in found.paths) == ["astronaut.png", "chelsea.png",
                                                          "coffee.png"]  # fmt: skip
    assert [link for link, _ in found.cycles] == [str(looped / "cat" / "loop")]
    found = expand_inputs([str(looped / "**")])
    assert len(found.paths) == 4 and len(found.cycles) == 1


def test_a_recursive_glob_over_two_loops_ends(tmp_path):
    """Two links to '.' made Python's glob walk 2^40 paths: the command never ended."""
    (tmp_path / "d2").mkdir()
    os.symlink(".", tmp_path / "d2" / "a")
    os.symlink(".", tmp_path / "d2" / "b")
    (tmp_path / "d2" / "x.png").write_bytes(b"x")
    code = textwrap.dedent(f"""
        from kerascope.images.inputs import expand_inputs
        found = expand_inputs([{str(tmp_path / "d2" / "**")!r}])
        print(len(found.paths), len(found.cycles))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "KERAS_BACKEND": "jax"})  # fmt: skip
    assert out.stdout.split() == ["1", "2"], out.stderr[-2000:]


def test_glob_matches_pythons_where_there_is_no_loop(tmp_path, monkeypatch):
    import glob

    from kerascope.images.inputs import _glob

    for rel in ("x.png", "a/y.png", "a/b/z.jpg", "a/n.txt", "c/w.png", ".h/v.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for pattern in ("**/*.png", "**", "*/**", "a/**/y.png", "**/", "a/**/", "[ab]/**/*.jpg",
                    str(tmp_path / "**" / "*.jpg"), "a/**"):  # fmt: skip
        assert _glob(pattern, []) == sorted(glob.glob(pattern, recursive=True)), pattern


def test_a_recursive_glob_from_the_root_walks_the_root(monkeypatch):
    """``/**/x.jpg`` walked the working folder and gave relative paths (the empty head before
    the first ``/`` read as "here")."""
    from kerascope.images import inputs

    walked = []
    monkeypatch.setattr(inputs, "_walk", lambda base, cycles, **_: walked.append(base) or iter(()))
    assert inputs._glob("/**/zzz_review.jpg", []) == [] and walked == [os.sep]
    walked.clear()
    assert inputs._glob("**/zzz_review.jpg", []) == [] and walked == ["."]


def test_train_scan_says_each_loop_and_makes_no_class_of_it(looped):
    os.symlink("../d", looped / "self")  # ln -s ../d d/self: a "class" of the whole dataset
    ds = scan_dataset(looped, check_images=False, val_split=0.5)
    assert ds.classes == ["cat", "coffee"]
    assert ds.counts["train"] == {"cat": 1, "coffee": 1}
    real = looped.resolve()
    assert loop_note(str(looped / "self"), str(real)) in ds.warnings
    assert loop_note(str(looped / "cat" / "loop"), str(real)) in ds.warnings
    assert not any("more than one class" in w for w in ds.warnings)


def test_train_scan_still_follows_a_class_folder_linked_from_elsewhere(tmp_path, looped):
    elsewhere = tmp_path / "elsewhere" / "mugs"
    elsewhere.mkdir(parents=True)
    shutil.copy(looped / "coffee" / "coffee.png", elsewhere / "mug.png")
    shutil.copy(looped / "coffee" / "rocket.jpg", elsewhere / "mug2.jpg")
    os.symlink(elsewhere, looped / "mugs")
    ds = scan_dataset(looped, check_images=False, val_split=0.5)
    assert ds.classes == ["cat", "coffee", "mugs"] and ds.counts["train"]["mugs"] == 1


def test_evaluate_says_the_loop_and_scores_each_picture_once(looped, lenet, tmp_path, caplog):
    """Before: 3 images scored, coffee.png once more as a cat (through cat/loop)."""
    from kerascope.evaluation import evaluate

    caplog.set_level("WARNING", logger="kerascope")
    result = evaluate(lenet, looped, output=tmp_path / "ev", top_losses=0, heatmaps=False)
    assert result.n == 4 and result.per_class["cat"].support == 2
    assert _loop_lines(caplog) == [loop_note(str(looped / "cat" / "loop"), str(looped.resolve()))]


def test_predict_and_classify_commands_print_the_loop_as_a_note(looped, lenet, capsys):
    from kerascope.cli import main

    assert main(["predict", str(lenet), str(looped / "cat"), "-o", "-"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.strip().splitlines()
    assert [Path(r.split(",")[0]).name for r in rows[1:]] == ["astronaut.png", "chelsea.png"]
    assert f"kerascope: skipped '{looped / 'cat' / 'loop'}': a link to" in captured.err
