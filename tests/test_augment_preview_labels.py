"""The augment preview grid (issue 24, item 6): each tile labelled with the transform it was
drawn with, and cells the shape of the picture (no square's worth of white around a photo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from kerascope.data.augment import AugmentConfig, sample_matrices
from kerascope.data.preview import augment_preview


def _draws(c: AugmentConfig, seed: int, n: int, height: int, width: int) -> list[dict]:
    """The values `sample_matrices` draws, in its order, from the same generator."""
    rng = np.random.default_rng([seed, 0, 0])
    flip_x = rng.random(n) < 0.5 if c.horizontal_flip else np.zeros(n, bool)
    flip_y = rng.random(n) < 0.5 if c.vertical_flip else np.zeros(n, bool)
    angle = rng.uniform(-c.rotation, c.rotation, n)
    shift = rng.uniform(-1, 1, (n, 2)) * [c.width_shift, c.height_shift]
    shear = rng.uniform(-c.shear, c.shear, n)
    zoom = rng.uniform(1 - c.zoom, 1 + c.zoom, (n, 2))
    return [{"flip_x": bool(flip_x[i]), "flip_y": bool(flip_y[i]), "rotation": angle[i],
             "shift": tuple(shift[i]), "shear": shear[i], "zoom": tuple(zoom[i])}
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(),
        AugmentConfig(vertical_flip=True, rotation=60, zoom=0.5, shear=0.4),
        AugmentConfig(horizontal_flip=False, width_shift=0, height_shift=0.5),
    ],  # fmt: skip
)
def test_labels_read_back_what_sample_matrices_drew(config):
    from kerascope.data.preview import _transform_of

    height, width = 300, 451
    matrices = sample_matrices(config, 3, 0, 0, 40, height, width)
    for matrix, drawn in zip(matrices, _draws(config, 3, 40, height, width), strict=True):
        got = _transform_of(matrix, config, height, width)
        assert (got["flip_x"], got["flip_y"]) == (drawn["flip_x"], drawn["flip_y"])
        assert got["rotation"] == pytest.approx(drawn["rotation"], abs=1e-3)
        assert got["shear"] == pytest.approx(drawn["shear"], abs=1e-4)
        assert got["zoom"] == pytest.approx(drawn["zoom"], abs=1e-4)
        assert got["shift"] == pytest.approx(drawn["shift"], abs=1e-4)


def test_grid_tiles_are_labelled_and_shaped_like_the_photo(photo_paths, tmp_path):
    paths = augment_preview(photo_paths["chelsea"], n=8, out_dir=tmp_path, seed=0)
    with Image.open(photo_paths["chelsea"]) as photo:
        aspect = photo.height / photo.width  # 300 / 451: landscape
    grid = np.asarray(Image.open(paths[-1]).convert("L")).astype(int)
    blank_rows = int((grid > 235).all(axis=1).sum())
    # Three rows of tiles: before, 64 white rows each above and below a 192-wide landscape
    # thumbnail in its square cell (> 190 in all); now the gaps and label line spacing only.
    assert blank_rows < 60, blank_rows
    tile = 192
    cell_h = round(tile * aspect)
    rows = math.ceil(9 / 3)
    assert grid.shape[0] < rows * (tile + 4)  # shorter than three square cells
    # under each tile, text: dark pixels in the band between the picture and the next row
    step_y = (grid.shape[0] - 4) // rows
    step_x = (grid.shape[1] - 4) // 3
    for k in range(9):
        top = 4 + (k // 3) * step_y + cell_h + 1
        band = grid[top : 4 + (k // 3 + 1) * step_y - 4, 4 + (k % 3) * step_x :][:, : step_x - 4]
        assert (band < 100).sum() > 30, k  # letters, not a blank strip


def test_a_value_that_rounds_to_zero_reads_plus_zero():
    """Before: "shear -0.00" and "shift -0%" for tiny negative values."""
    from kerascope.data.preview import _describe

    t = {"flip_x": False, "flip_y": False, "rotation": -0.2, "shift": (-0.001, 0.004),
         "zoom": (1.0, 1.0), "shear": -0.001}  # fmt: skip
    assert _describe(t) == "rot +0° shear +0.00\nshift +0% +0% zoom 1.00/1.00"
