"""Pictures and numbers that say what they are (a sceptical user's findings on ``explain``).

Before: --compare ranked methods by a metric with no reference (a random noise map beat
Grad-CAM on deletion AUC) and drew a method failing the sanity check in gold as #1; the colour
key said "low ... high" of a map scaled to its own maximum, and a class at <0.01 % looked as hot
as the top one; EigenCAM's class-independent map was labelled with the top class; nothing said
why explain's top class differs from classify's; a crop's pixel map was squeezed to ~84 px.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cam.compare import (
    _HIGHLIGHT,
    NO_BETTER,
    REFERENCE,
    Comparison,
    MethodScore,
    compare_methods,
    draw_grid,
)
from kerascope.cam.faithfulness import Faithfulness
from kerascope.cam.labels import picture_label
from tests.conftest import load_rgb


def _made_up(metric: str = "deletion") -> Comparison:
    """ig-blur (fails the sanity check) first by deletion, xgradcam second and better than the
    random map, gradcam and ig no better than it; the random map scores 0.15."""
    values = {"ig-blur": (0.05, False), "xgradcam": (0.10, True), "gradcam": (0.20, True),
              "ig": (0.30, True)}  # fmt: skip
    rows = [MethodScore(name, sanity=sane, faithfulness=Faithfulness(
                0, 0.5, deletion=d, insertion=0.5, drop=0.9, increase=False))
            for name, (d, sane) in values.items()]  # fmt: skip
    ref = MethodScore(REFERENCE, faithfulness=Faithfulness(0, 0.5, deletion=0.15, insertion=0.4,
                                                           drop=0.95, increase=False))  # fmt: skip
    comparison = Comparison("cat.jpg", 281, "tabby", 0.5, metric, rows, reference=ref)
    comparison.judge()
    return comparison


def _gold_pixels(region: np.ndarray) -> int:
    return int(np.sum(np.all(np.abs(region.astype(int) - _HIGHLIGHT) <= 24, axis=-1)))


def test_gold_goes_to_the_best_method_that_passes_the_checks_not_to_the_first():
    comparison = _made_up()
    assert [m.method for m in comparison.ranking()] == ["ig-blur", "xgradcam", "gradcam", "ig"]
    assert [m.beats_random for m in comparison.ranking()] == [True, True, False, False]
    assert comparison.best().method == "xgradcam"
    rng = np.random.default_rng(0)
    maps = {m.method: rng.random((7, 7)).astype(np.float32) for m in comparison.methods}
    picture = np.full((100, 320, 3), 90, np.uint8)  # wide: every title on one line
    grid, boxes = draw_grid(comparison, picture, maps, 0.4, "viridis")
    gold = {}
    for method, (left, top, right, _) in boxes:  # the one-line title band above each overlay
        gold[method] = _gold_pixels(grid[top - 26 : top, left:right])
    assert gold["xgradcam"] > 20
    assert gold["ig-blur"] == gold["gradcam"] == gold["ig"] == 0  # ig-blur was gold as #1


def test_no_gold_when_every_method_fails_a_check():
    comparison = _made_up()
    comparison.reference.faithfulness.deletion = 0.01  # the noise beats every method
    comparison.judge()
    assert comparison.best() is None
    grid, boxes = draw_grid(comparison, np.full((60, 320, 3), 90, np.uint8),
                            {m.method: np.ones((7, 7), np.float32) for m in comparison.methods},
                            0.4, "viridis")  # fmt: skip
    for _, (left, top, right, _) in boxes:
        assert _gold_pixels(grid[top - 26 : top, left:right]) == 0


def test_the_ranking_table_has_the_reference_row_marks_and_notes(capsys):
    from kerascope.cli_explain import _print_ranking

    _print_ranking(_made_up())
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if "│" in line]
    names = [next((n for n in ("ig-blur", "xgradcam", "gradcam", "ig ", REFERENCE)
                   if n in line), None) for line in rows]  # fmt: skip
    names = [n.strip() for n in names if n]
    assert names == ["ig-blur", "xgradcam", REFERENCE, "gradcam", "ig"]  # the noise at 0.150
    assert sum(NO_BETTER in line for line in rows) == 2
    err = " ".join(err.split())
    assert "deletion AUC favours fine-grained (pixel) maps" in err
    assert f"a {REFERENCE} (reference) scores deletion AUC 0.150" in err
    assert "beats it: xgradcam" in err
    assert "ig: from a black baseline" in err and "ig-blur: from a black" not in err


def test_compare_scores_a_fine_grained_random_map_on_the_same_pixels(lite0, photo_paths):
    """Measured on chelsea.png: the seeded noise map's deletion AUC is below Grad-CAM's (it
    removes scattered pixels), so Grad-CAM is marked and is not the best; EigenCAM's row says
    it is class-independent."""
    c = compare_methods(str(photo_paths["chelsea"]), None, lite0,
                        methods=["gradcam", "eigencam"], metric="deletion")  # fmt: skip
    ref = c.reference.faithfulness
    noise = ref.heatmap
    assert noise.shape == lite0.input_size  # input resolution, not a coarse grid
    assert np.abs(np.diff(noise, axis=1)).mean() > 0.25  # neighbours independent (1/3)
    assert ref.class_index == c.class_index and ref.probability == c.probability
    gradcam, eigencam = c.methods
    assert ref.deletion < gradcam.faithfulness.deletion  # measured: ~0.14 against ~0.34
    assert gradcam.beats_random is False and NO_BETTER in gradcam.marks()
    assert c.best() is not gradcam
    assert eigencam.class_independent and "not class-specific" in eigencam.marks()
    again = compare_methods(str(photo_paths["chelsea"]), None, lite0, methods=["gradcam"],
                            metric="deletion")  # fmt: skip
    assert again.reference.faithfulness.deletion == ref.deletion  # seeded


def test_colour_key_says_it_is_relative_to_the_map_maximum():
    """The key's right-hand word is as wide as "this map's max" drawn in its font (it was
    "high"); too narrow for it, "max"."""
    from kerascope.fonts import pillow_font

    height = 22
    font = pillow_font(max(8, round(height * 0.68)))
    for width, word in ((451, "this map's max"), (110, "max")):
        key = ov.colorbar(width, height)
        bright = np.flatnonzero(np.all(key > 160, axis=-1).any(axis=0))
        right = bright[bright > width // 2]
        drawn = right[-1] - right[0] + 1
        assert abs(drawn - font.getlength(word)) <= 3, (width, drawn)


@pytest.mark.parametrize(
    ("args", "label"),
    [
        (("Egyptian_cat", 0.7712, "gradcam"), "Egyptian cat 77.1% (gradcam)"),
        (("goldfish", 0.00003, "gradcam"), "goldfish <0.01% (gradcam): map shape only"),
        (("tiger_cat", 0.403, "eigencam"),
         "tiger cat 40.3% (eigencam: the layer's main component, not class-specific)"),
        # the rule follows the number printed: 0.00996 prints 1.0%, which is not "under 1%"
        (("goldfish", 0.00996, "gradcam"), "goldfish 1.0% (gradcam)"),
        (("goldfish", 0.0094, "gradcam"), "goldfish 0.9% (gradcam): map shape only"),
        # an unknown probability is no number, never "0%" and "map shape only"
        (("Egyptian_cat", None, "eigencam"),
         "Egyptian cat (eigencam: the layer's main component, not class-specific)"),
        (("Egyptian_cat", None, None), "Egyptian cat"),
    ],
)  # fmt: skip
def test_picture_labels(args, label):
    assert picture_label(*args) == label


def test_a_negligible_class_is_labelled_shape_only_on_the_picture(lite0, photo_paths, tmp_path):
    from kerascope.cam.save import save_explanations
    from kerascope.output import percent

    path = str(photo_paths["chelsea"])
    saved = save_explanations(path, tmp_path, lite0, target="goldfish")[0]
    e = saved.explanation
    p = e.probability
    assert p < 0.01  # measured: the model all but rules goldfish out
    photo = load_rgb(photo_paths["chelsea"])
    bar = ov.bar_height(photo.shape[0])
    with Image.open(saved.path) as img:
        drawn = np.asarray(img.convert("RGB"))[:bar].astype(int)
    said = f"goldfish {percent(e.probability)} (gradcam): map shape only"
    new = ov.side_by_side(photo, photo, said)
    old = ov.side_by_side(photo, photo, f"goldfish {e.probability:.2%} (gradcam)")
    new_diff = np.abs(drawn - new[:bar]).mean()
    assert new_diff < 3 and new_diff < np.abs(drawn - old[:bar]).mean() / 3


def test_a_crop_keeps_a_pixel_maps_resolution():
    """A 224 x 224 map of isolated hot pixels in the centre crop of an 800 x 300 picture: its
    hot pixels survive placing (a 256 px grid over the whole picture blurred every one away)."""
    cam = (np.random.default_rng(0).random((224, 224)) > 0.95).astype(np.float32)
    box = (268.75, 18.75, 531.25, 281.25)  # 0.875 of 300, centred
    placed = ov.place_in_picture(cam, (300, 800), box)
    assert placed.shape[0] >= 256 and placed.shape[1] >= 224 * 800 / 262.5 - 1
    inside = ov.upsample(placed, (300, 800))[19:281, 269:531]
    assert (inside >= 0.5).mean() > 0.5 * (cam >= 0.5).mean()  # was 0.0
    coarse = ov.place_in_picture(np.eye(7, dtype=np.float32), (300, 800), box)
    assert coarse.shape == (96, 256)  # a CAM map: the small grid, as before


def test_whole_fit_says_once_why_classify_may_differ(lite0, capsys):
    from kerascope.cli_explain import FIT_NOTE, FIT_NOTE_CLASS, _say_fit

    for fit, said in (("whole", True), ("crop", False)):
        _say_fit(argparse.Namespace(fit=fit), lite0)
        assert (FIT_NOTE in " ".join(capsys.readouterr().err.split())) is said
    # --class tabby: the top class is not what can differ, its probability is
    _say_fit(argparse.Namespace(fit="whole", target="tabby"), lite0)
    err = " ".join(capsys.readouterr().err.split())
    assert FIT_NOTE_CLASS in err and "top class" not in err


def test_score_says_eigencam_is_class_independent(photo_paths, tmp_path, capsys,
                                                  shared_zoo_models):  # fmt: skip
    from kerascope.cli import main

    argv = ["explain", str(photo_paths["chelsea"]), "-o", str(tmp_path), "--method",
            "eigencam", "--score"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    out, err = " ".join(out.split()), " ".join(err.split())
    assert "(top class" in out and "Egyptian_cat)" in out  # the class cells (they fold)
    assert "layer's main component, not class-specific" in out  # the title
    assert err.count("explain scores the whole picture") == 1


def test_help_says_ig_credits_bright_areas_from_black(capsys):
    from kerascope.cli import main

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    ig = text[text.index(" ig (") : text.index(" ig-blur (")]
    assert "from a black baseline" in ig and "white" in ig
    assert "from a black baseline" not in text[text.index(" ig-blur (") :]
