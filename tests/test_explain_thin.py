"""explain's pictures of very thin originals (a 30000x20 panorama drew a label bar over a 3 px
strip), and the explain help saying where pictures go."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cam import save
from kerascope.cli import main
from kerascope.images import load_image, resize

MIN_PICTURE_SIDE = 112  # `kerascope.cam.stretch.MIN_PICTURE_SIDE` (checked below)


def test_a_panorama_is_drawn_tall_enough_to_show_its_heatmap(tiny_clf, chelsea, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """6000x4 drawn at 1200 px (the cap, lowered here) was 1200x1: now 1200x112 under the bar,
    the photo stretched and its map with it; a 2:1 picture is drawn as it was."""
    monkeypatch.setattr(save, "OUTPUT_MAX_SIDE", 1200)
    strip = tmp_path / "pano.png"
    Image.fromarray(chelsea).resize((6000, 4), Image.Resampling.BICUBIC).save(strip)
    wide = tmp_path / "wide.png"
    Image.fromarray(chelsea).resize((600, 300), Image.Resampling.BICUBIC).save(wide)
    saved = save.save_explanations([strip, wide], tmp_path / "out", tiny_clf, workers=1)
    assert all(s.ok for s in saved)
    with Image.open(saved[0].path) as picture:
        drawn = np.asarray(picture.convert("RGB")).astype(int)
    bar = ov.bar_height(MIN_PICTURE_SIDE)
    assert drawn.shape[:2] == (bar + MIN_PICTURE_SIDE, 2 * 1200)
    original = drawn[bar:, :1200]
    row = resize(load_image(strip), (1, 1200))  # the 1 px the cap drew before
    expected = np.repeat(row, MIN_PICTURE_SIDE, axis=0).astype(int)
    assert np.abs(original - expected).mean() < 4  # the photo, stretched
    assert np.abs(drawn[bar:, 1200:] - original).mean() > 2  # the heatmap over it shows
    with Image.open(saved[1].path) as picture:
        assert picture.size == (1200, 300 + ov.bar_height(300))  # unchanged


@pytest.mark.parametrize("size", [(300, 3), (3, 300), (500, 111)])
def test_both_layouts_stretch_a_thin_picture_alike(size):
    """The NumPy layout (video frames) and the Pillow one (explain) give the same picture."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    side = ov.side_by_side(photo, photo, "tabby 50.0% (gradcam)")
    picture = ov.side_by_side_image(Image.fromarray(photo), Image.fromarray(photo),
                                    "tabby 50.0% (gradcam)")  # fmt: skip
    assert np.array_equal(np.asarray(picture), side)
    width, height = max(size[0], MIN_PICTURE_SIDE), max(size[1], MIN_PICTURE_SIDE)
    assert side.shape == (ov.bar_height(height) + height, 2 * width, 3)


def test_the_side_is_the_modules():
    from kerascope.cam.stretch import MIN_PICTURE_SIDE as side

    assert side == MIN_PICTURE_SIDE


def test_the_help_says_where_explain_writes(capsys):
    """Before: "saved beside the original", while -o defaults to the current folder."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "beside the original" not in text
    assert "<name>-output.jpg in -o (default: the current folder)" in text
