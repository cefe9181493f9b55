"""Inputs to images: expanding files/folders/globs, arrays from the Python API, resizing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.images import (
    IMAGE_SUFFIXES,
    as_rgb_array,
    expand_inputs,
    resize,
)

# --- expand_inputs ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for rel in [
        "b.jpg",
        "a.png",
        "notes.txt",
        ".DS_Store",
        ".hidden.jpg",
        ".ipynb_checkpoints/x-checkpoint.png",
        "sub/c.JPG",
        "sub/d.txt",
        "sub/.git/e.png",
        "sub/deeper/f.webp",
        "empty/.keep",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def _rel(paths: list[str], root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_folder_recursive_sorted_hidden_ignored(tree):
    found = expand_inputs([tree])
    assert _rel(found.paths, tree) == ["a.png", "b.jpg", "sub/c.JPG", "sub/deeper/f.webp"]
    assert _rel(found.skipped, tree) == ["notes.txt", "sub/d.txt"]
    assert found.missing == []
    assert all(isinstance(p, str) and p.startswith(str(tree)) for p in found.paths)


def test_explicit_files_kept_whatever_the_suffix(tree):
    found = expand_inputs([str(tree / "notes.txt"), tree / ".hidden.jpg"])
    assert _rel(found.paths, tree) == ["notes.txt", ".hidden.jpg"]
    assert found.skipped == []


def test_globs(tree):
    found = expand_inputs([str(tree / "**" / "*.png"), str(tree / "*")])
    # ** does not descend into hidden folders; "*" expands the sub folders it matches
    assert _rel(found.paths, tree) == ["a.png", "b.jpg", "sub/c.JPG", "sub/deeper/f.webp"]
    assert _rel(found.skipped, tree) == ["notes.txt", "sub/d.txt"]


@pytest.mark.parametrize(
    "pattern",
    [
        "**/.git/*.png",
        "**/.*.jpg",
        "sub/**/*",
        "**/*.png",
        "**/.ipynb_checkpoints/*",
        ".*/*.png",
        "**/e.png",
    ],
)
def test_globs_treat_hidden_entries_as_python_does(tree, pattern):
    """A component that starts with a dot names hidden entries; ``*`` and ``**`` never match
    them. Before: ``**/.git/*.png`` found nothing, since the walk left hidden folders out."""
    import glob

    found = expand_inputs([str(tree / pattern)])
    want = sorted(p for p in glob.glob(str(tree / pattern), recursive=True) if os.path.isfile(p))
    assert sorted(found.paths + found.skipped) == want


def test_missing_inputs(tree):
    missing = [str(tree / "nope.jpg"), str(tree / "*.gif"), ""]
    found = expand_inputs([*missing, str(tree / "a.png"), str(tree / "nope.jpg")])
    assert found.missing == missing
    assert _rel(found.paths, tree) == ["a.png"]


def test_order_preserved_and_duplicates_removed(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    found = expand_inputs(
        ["photos/sub", "photos/a.png", "./photos/a.png", "photos", tree / "b.jpg"]
    )
    assert found.paths == [
        os.path.join("photos/sub", "c.JPG"),
        os.path.join("photos/sub", "deeper", "f.webp"),
        "photos/a.png",
        os.path.join("photos", "b.jpg"),
    ]
    assert found.skipped == [
        os.path.join("photos/sub", "d.txt"),
        os.path.join("photos", "notes.txt"),
    ]


def test_linked_folders_are_walked_once_and_a_link_back_up_is_no_loop(tree, tmp_path):
    """Before: a linked folder was skipped in silence (`classify dl/` said "no images").
    A link to a folder inside the tree is not followed: that folder comes by its own name."""
    other = tmp_path / "other"
    (other / "inner").mkdir(parents=True)
    (other / "inner" / "g.png").write_bytes(b"x")
    (tree / "linked").symlink_to(other)
    (other / "inner" / "up").symlink_to(tree)  # back up: the walk must not go round
    (tree / "again").symlink_to(tree / "sub")  # within the tree: sub comes by its own name
    found = expand_inputs([tree])
    assert _rel(found.paths, tree) == ["a.png", "b.jpg", "linked/inner/g.png", "sub/c.JPG",
                                       "sub/deeper/f.webp"]  # fmt: skip
    (tree / "also").symlink_to(other)  # the same outside folder twice: walked once
    found = expand_inputs([tree])
    assert _rel(found.paths, tree) == ["a.png", "b.jpg", "also/inner/g.png", "sub/c.JPG",
                                       "sub/deeper/f.webp"]  # fmt: skip


def test_a_folder_that_cannot_be_listed_is_kept_and_says_why(tree, monkeypatch):
    """Before: an unreadable sub-folder was left out without a word. (Patched: root, which
    runs CI, reads any folder.)"""
    from kerascope.images.decode import file_problem

    locked = os.path.join(tree, "sub")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = expand_inputs([tree])
    assert _rel(found.paths, tree) == ["a.png", "b.jpg", "sub"]
    assert file_problem(locked, "an image") == ("folder cannot be read (permission denied): "
                                                "its images are left out")  # fmt: skip


def test_suffixes_are_lower_case_with_dot():
    assert {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".jfif",
    } <= IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)


# --- as_rgb_array and resize ------------------------------------------------------------------


def test_as_rgb_array_dtypes_and_shapes():
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    for shaped in (gray, gray[..., None]):
        out = as_rgb_array(shaped)
        assert out.shape == (1, 3, 3) and out.dtype == np.uint8
        assert out[0, :, 2].tolist() == [0, 128, 255]
    assert as_rgb_array(np.array([[0, 32768, 65535]], np.uint16))[0, :, 0].tolist() == [0, 128, 255]
    assert as_rgb_array(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    assert as_rgb_array(np.array([[0.0, 3.0, 255.0]]))[0, :, 0].tolist() == [0, 3, 255]
    assert as_rgb_array(np.array([[False, True]]))[0, :, 0].tolist() == [0, 255]
    assert as_rgb_array(np.array([[0, 200]], np.int64))[0, :, 0].tolist() == [0, 200]
    rgba = np.array([[[1, 2, 3, 0], [10, 20, 30, 255]]], np.uint8)
    assert as_rgb_array(rgba)[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def test_as_rgb_array_does_not_copy_valid_input():
    rgb = np.zeros((4, 5, 3), np.uint8)
    assert np.shares_memory(as_rgb_array(rgb), rgb)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((2, 8, 8, 3), np.uint8), "batch"),
        (np.zeros((8, 8, 2), np.uint8), r"expected \(H, W\)"),
        (np.zeros(8, np.uint8), r"expected \(H, W\)"),
        (np.zeros((0, 8, 3), np.uint8), "no pixels"),
        (np.full((2, 2), -0.5, np.float32), r"\[-1, 1\]"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.full((2, 2), 300, np.int32), "0..255"),
        (np.zeros((2, 2), complex), "dtype"),
    ],
)
def test_as_rgb_array_rejects(array, match):
    with pytest.raises(ValueError, match=match):
        as_rgb_array(array)


def test_resize_shape_order_and_filter(chelsea):
    out = resize(chelsea, (100, 150))
    assert out.shape == (100, 150, 3) and out.dtype == np.uint8
    expected = Image.fromarray(chelsea).resize(
        (150, 100), Image.Resampling.BILINEAR, reducing_gap=3.0
    )
    np.testing.assert_array_equal(out, np.asarray(expected))
    assert (
        np.abs(out.astype(int) - np.asarray(Image.fromarray(chelsea).resize((150, 100), 2))).mean()
        < 1
    )


def test_resize_antialiases_and_upsamples():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: aliasing would give pure black or white
    small = resize(stripes, (8, 8))
    assert np.abs(small.astype(int) - 128).max() < 8
    big = resize(np.full((2, 3), 77, np.uint8), (20, 30))
    assert big.shape == (20, 30, 3) and (big == 77).all()


def test_resize_same_size_copies_and_rejects_bad_sizes():
    rgb = np.ones((4, 4, 3), np.uint8)
    out = resize(rgb, (4, 4))
    assert not np.shares_memory(out, rgb)
    with pytest.raises(ValueError, match="positive"):
        resize(rgb, (0, 4))
