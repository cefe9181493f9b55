"""``--fit whole|crop`` and one input for every number (issue 20, defects 1 and 2).

On the real offline EfficientNet-Lite0 and real photos. Before the fix, explain showed the model
the centre crop while ``--compare`` and `kerascope.faithfulness` squashed the whole picture
with another filter: chelsea was tiger_cat 38.5 % in one and Egyptian_cat 79.1 % in the other,
and ``--score`` ranked the crop's map over the squashed pixels (deletion AUC 0.039 against
0.352 under ``--compare``). Now all of them decode and fit the picture once, the same way, and
score the map the model computed on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.cam.fitting import pixel_box

FITS = ("whole", "crop")
CHEAP = ["deletion"]
STEPS = 5  # deletion in 5 steps: the numbers are compared with each other, not with a value


@pytest.fixture(scope="module")
def chelsea_numbers(lite0, photo_paths):
    """Per fit: explain, faithfulness(), --score's iter_scores and --compare on chelsea.png."""
    import kerascope
    from kerascope.cam.compare import compare_methods
    from kerascope.cam.faithfulness import iter_scores

    path = str(photo_paths["chelsea"])
    out = {}
    for fit in FITS:
        e = kerascope.explain(path, model=lite0, fit=fit)
        f = kerascope.faithfulness(path, e, model=lite0, metrics=CHEAP, steps=STEPS)
        scored = iter_scores(lite0, [path], "gradcam", metrics=CHEAP, steps=STEPS, fit=fit)
        scored_e, scored_f = next(scored)
        c = compare_methods(path, None, lite0, methods=["gradcam"], metric="deletion",
                            steps=STEPS, fit=fit)  # fmt: skip
        out[fit] = (e, f, scored_e, scored_f, c)
    return out


@pytest.mark.parametrize("fit", FITS)
def test_explain_score_compare_and_faithfulness_agree_on_class_probability_and_map(
    chelsea_numbers, fit
):
    e, f, scored_e, scored_f, c = chelsea_numbers[fit]
    compared = c.methods[0].faithfulness
    # One class and one probability. The explainer's forward (Keras) and the scoring engine
    # (onnxruntime on CPU) agree to float32 rounding; the scorers share one engine exactly.
    assert e.class_index == f.class_index == scored_e.class_index == c.class_index
    assert e.class_index == scored_f.class_index == compared.class_index
    assert e.probability == scored_e.probability
    assert f.probability == scored_f.probability == c.probability == compared.probability
    assert abs(e.probability - c.probability) < 1e-5
    # One map: the one the model computed, scored as it is, so one number per metric.
    assert np.array_equal(e.model_map, scored_e.model_map)
    assert np.array_equal(e.model_map, c.maps["gradcam"])
    assert np.array_equal(f.heatmap, scored_f.heatmap)
    assert np.array_equal(f.heatmap, compared.heatmap)
    assert f.deletion == scored_f.deletion == compared.deletion
    assert e.fit == c.fit == fit


def test_whole_sees_the_picture_and_crop_sees_what_classify_sees(
    chelsea_numbers, lite0, chelsea, photo_paths
):
    import kerascope

    whole, crop = chelsea_numbers["whole"][0], chelsea_numbers["crop"][0]
    top = kerascope.classify(photo_paths["chelsea"], model=lite0)[0].predictions[0]
    assert crop.class_name == top.name and abs(crop.probability - top.probability) < 1e-5
    assert whole.class_name == "Egyptian_cat" and crop.class_name == "tiger_cat"  # measured
    assert whole.box == (0.0, 0.0, 1.0, 1.0)
    left, top_, right, bottom = crop.box  # 451x300: 0.875 of the shorter side, centred
    assert right - left == pytest.approx(0.875 * 300 / 451) and bottom - top_ == 0.875
    assert whole.heatmap.shape == crop.heatmap.shape == chelsea.shape[:2]


@pytest.fixture(scope="module")
def wide(skimage_data):
    """A wide real photo: the top 200 rows of astronaut.png (200 x 512)."""
    with Image.open(skimage_data / "astronaut.png") as img:
        return np.array(img.convert("RGB"))[:200]


def _outside(box, shape) -> np.ndarray:
    left, top, right, bottom = pixel_box(box, shape)
    mask = np.ones(shape[:2], bool)
    mask[top:bottom, left:right] = False
    return mask


def test_whole_heat_can_peak_outside_the_centre_crop(lite0, wide):
    import kerascope

    whole = kerascope.explain(wide, model=lite0, fit="whole")
    crop = kerascope.explain(wide, model=lite0, fit="crop")
    outside = _outside(crop.box, wide.shape)
    assert outside.mean() > 0.5  # the crop leaves out most of this picture
    assert whole.heatmap[outside].max() > 0.99  # measured: the peak lies outside the crop
    assert crop.heatmap[outside].max() == 0.0  # the crop's map: nothing where it did not look


def test_crop_leaves_the_outside_as_the_photo_outlines_the_crop_and_says_so(lite0, wide, tmp_path):
    import kerascope
    from kerascope.cam.save import save_explanations

    crop = kerascope.explain(wide, model=lite0, fit="crop")
    blended = crop.overlay(wide)
    outside = _outside(crop.box, wide.shape)
    assert np.array_equal(blended[outside], wide[outside])  # untinted, pixel for pixel
    assert not np.array_equal(blended[~outside], wide[~outside])

    saved = save_explanations([wide], tmp_path, lite0, fit="crop")[0]
    with Image.open(saved.path) as img:
        picture = np.asarray(img.convert("RGB"), dtype=np.int16)
    bar = picture.shape[0] - wide.shape[0]
    right = picture[bar:, wide.shape[1] :]  # the overlay half
    left, top, r, bottom = pixel_box(crop.box, wide.shape)
    assert right[top + 5 : bottom - 5, left].min() > 200  # the outline: white at the crop's edge
    away = outside.copy()
    away[:, max(0, left - 4) : r + 4] = False  # JPEG rings a few pixels around the line
    assert np.abs(right[away] - wide[away]).mean() < 3  # the photo outside (JPEG noise only)

    whole = save_explanations([wide], tmp_path / "w", lite0, fit="whole")[0]
    with Image.open(whole.path) as img:
        assert np.asarray(img).shape == picture.shape[:2] + (3,)


def test_caption_says_what_the_model_saw():
    from kerascope.cam.fitting import caption, with_caption

    assert with_caption("tabby 50.0%", (0.0, 0.0, 1.0, 1.0), (300, 451)) == "tabby 50.0%"
    text = caption((0.25, 0.0, 0.75, 1.0), (300, 451))
    assert text == "the model saw only the outlined crop (50% x 100%)"


def test_fit_is_checked_before_any_work(photo_paths, lite0):
    import kerascope
    from kerascope.cam.faithfulness import MetricError
    from kerascope.cam.fitting import FitError

    with pytest.raises(FitError, match="whole, crop"):
        kerascope.explain(photo_paths["chelsea"], model=lite0, fit="letterbox")
    with pytest.raises(MetricError, match="whole, crop"):
        kerascope.faithfulness(photo_paths["chelsea"], np.ones((7, 7)), lite0, fit="square")


def test_faithfulness_of_a_raw_map_over_the_picture_scores_the_part_the_model_saw(
    chelsea_numbers, lite0, photo_paths
):
    """A map over the whole picture (what Explanation.heatmap is) scored with fit=crop: its part
    over the crop, resampled, ranks pixels almost as the model's own map does."""
    import kerascope

    e, f = chelsea_numbers["crop"][:2]
    raw = kerascope.faithfulness(photo_paths["chelsea"], e.heatmap, lite0, CHEAP, STEPS,
                                 class_index=e.class_index, fit="crop")  # fmt: skip
    assert raw.probability == f.probability
    assert np.corrcoef(raw.heatmap.ravel(), f.heatmap.ravel())[0, 1] > 0.98
    assert raw.deletion == pytest.approx(f.deletion, abs=0.02)


def test_video_crop_leaves_each_frame_outside_the_crop_as_it_was(lite0, photo_paths, tmp_path):
    """Frames of 320 x 240: the model's crop is the centre 210 x 210; beside it, the overlay half
    of a written frame is the frame itself (up to JPEG loss), and the crop is outlined."""
    pytest.importorskip("av")
    from kerascope.cam import overlay as ov
    from kerascope.video import explain_video
    from tests.test_video import SIZE, clip_frames, write_clip

    clip = write_clip(tmp_path / "pan.mp4", clip_frames(photo_paths)[:8])
    frames_dir = tmp_path / "frames"
    explain_video(clip, tmp_path / "out.mp4", clf=lite0, every=8, batch_size=1,
                  frames_dir=frames_dir, fit="crop")  # fmt: skip
    with Image.open(frames_dir / "frame_00001.jpg") as img:
        frame = np.asarray(img.convert("RGB"), dtype=np.int16)
    photo, drawn = (
        frame[ov.bar_height(SIZE[1]) :, : SIZE[0]],
        frame[ov.bar_height(SIZE[1]) :, SIZE[0] :],
    )
    left = round((SIZE[0] - 0.875 * SIZE[1]) / 2)  # 55: 0.875 of the shorter side, centred
    assert np.abs(drawn[:, : left - 4] - photo[:, : left - 4]).mean() < 3
    assert np.abs(drawn[:, -(left - 4) :] - photo[:, -(left - 4) :]).mean() < 3
    assert drawn[40:-40, left].min() > 180  # the white outline at the crop's left edge


@pytest.mark.parametrize("command", [["explain", "a.png"], ["video", "a.mp4"]])
def test_cli_fit_choice_is_one_line(command, capsys):
    from kerascope.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--fit", "letterbox"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fit" in err and "'whole', 'crop'" in err


def test_cli_explain_fit_crop_labels_classify_s_class_and_says_what_the_model_saw(
    lite0, photo_paths, tmp_path, capsys, shared_zoo_models
):
    """The CLI passes --fit through: its printed class is the crop's (classify's), and the
    picture's overlay is the photo outside the outlined crop."""
    from kerascope.cli import main

    path = photo_paths["chelsea"]
    assert main(["explain", str(path), "-o", str(tmp_path), "--fit", "crop"]) == 0
    assert "tiger_cat" in capsys.readouterr().out
    with Image.open(tmp_path / "chelsea-output.jpg") as img:
        picture = np.asarray(img.convert("RGB"), dtype=np.int16)
    photo, drawn = picture[-300:, :451], picture[-300:, 451:]
    assert np.abs(drawn[:, :85] - photo[:, :85]).mean() < 3  # the crop starts at x = 94
    assert np.abs(drawn[:, 100:350] - photo[:, 100:350]).mean() > 5  # tinted inside it


def test_batch_settings_keep_the_fit_and_refuse_a_bad_one():
    from kerascope.scale.run import BatchError, _settings

    assert _settings("explain", {})["fit"] == "whole"
    assert _settings("explain", {"fit": "crop"})["fit"] == "crop"
    with pytest.raises(BatchError, match="--fit must be whole or crop"):
        _settings("explain", {"fit": "square"})


def test_a_large_jpeg_is_one_input_too(lite0, chelsea, tmp_path):
    """A photo over four times the input is decoded at reduced size for the model (JPEG draft)
    by --score, --compare and faithfulness(); explain() fits the same decode (it fitted the
    full one: 76.8 % against faithfulness()'s 78.4 % here), its heatmap still full size."""
    import kerascope

    path = tmp_path / "big.jpg"
    Image.fromarray(chelsea).resize((2706, 1800), Image.Resampling.BICUBIC).save(path, quality=92)
    e = kerascope.explain(path, model=lite0)
    f = kerascope.faithfulness(path, e, model=lite0, metrics=CHEAP, steps=2)
    assert abs(e.probability - f.probability) < 1e-5
    assert e.heatmap.shape == (1800, 2706)
