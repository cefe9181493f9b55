"""--compare's random reference, and what explain's tables and labels say of EigenCAM.

Before: the reference was one seeded noise map, whose ROAD MoRF on chelsea.png moved with the
seed (sd 0.017 over 8 seeds), so whether a method was "no better than a random map" depended on
the seed; explain's table put EigenCAM's top class in its class column while the picture said
"not class-specific"; on a 224 px video frame EigenCAM's label wrapped to two lines at 8 px
(the shape-only label got one line at 10 px); the --compare grid named the class as Keras does
(``Egyptian_cat``) where every other picture says "Egyptian cat".
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cam.compare import (
    NO_BETTER,
    REFERENCE,
    Comparison,
    MethodScore,
    compare_methods,
    grid_header,
)
from kerascope.cam.faithfulness import Faithfulness
from kerascope.cam.labels import picture_label
from kerascope.cam.reference import REFERENCE_SEEDS, random_map
from kerascope.cli import main


def test_compare_scores_several_seeded_random_maps_in_one_run(lite0, photo_paths):
    """Each reference map scores as it would alone; the row is their mean, the bar their best."""
    from kerascope.cam.faithfulness import score_pixels
    from kerascope.cam.fitting import model_input

    path = str(photo_paths["chelsea"])
    c = compare_methods(path, None, lite0, methods=["gradcam"], metric="insertion", steps=10)
    runs = c.reference_runs
    assert len(runs) == REFERENCE_SEEDS
    assert not np.array_equal(runs[0].heatmap, runs[1].heatmap)  # different maps
    pixels = model_input(lite0, path, "whole").pixels
    for k, run in enumerate(runs):
        alone = score_pixels(lite0, pixels, random_map(pixels.shape[:2], k), c.class_index,
                             ["deletion", "insertion", "drop"], 10)  # fmt: skip
        assert run.insertion == pytest.approx(alone.insertion, abs=1e-5)
        assert run.deletion == pytest.approx(alone.deletion, abs=1e-5)
    insertions = [r.insertion for r in runs]
    assert np.std(insertions) > 0  # the seeds do differ: one map is one draw
    assert c.reference.faithfulness.insertion == pytest.approx(np.mean(insertions))
    assert c.bar() == max(insertions)  # higher is better: the best random map is the bar
    gradcam = c.methods[0]
    assert gradcam.beats_random is (gradcam.faithfulness.insertion > max(insertions))


def _made_up() -> Comparison:
    """Four random maps by deletion 0.10, 0.15, 0.20, 0.15 (mean 0.15); gradcam at 0.12
    beats their mean but not their best; xgradcam at 0.09 beats them all."""
    runs = [Faithfulness(0, 0.5, deletion=d, insertion=0.4, drop=0.95, increase=False)
            for d in (0.10, 0.15, 0.20, 0.15)]  # fmt: skip
    mean = Faithfulness(0, 0.5, deletion=0.15, insertion=0.4, drop=0.95, increase=False)
    rows = [MethodScore(name, faithfulness=Faithfulness(0, 0.5, deletion=d, insertion=0.5,
                                                        drop=0.9, increase=False))
            for name, d in (("xgradcam", 0.09), ("gradcam", 0.12))]  # fmt: skip
    comparison = Comparison("cat.jpg", 281, "tabby", 0.5, "deletion", rows,
                            reference=MethodScore(REFERENCE, faithfulness=mean),
                            reference_runs=runs)  # fmt: skip
    comparison.judge()
    return comparison


def test_a_method_must_beat_the_best_random_map_not_their_mean():
    comparison = _made_up()
    xgradcam, gradcam = comparison.methods
    assert comparison.bar() == 0.10
    assert xgradcam.beats_random is True and gradcam.beats_random is False
    assert NO_BETTER in gradcam.marks() and comparison.best() is xgradcam


def test_the_ranking_table_shows_the_reference_mean_spread_and_bar(capsys):
    from kerascope.cli_explain import _print_ranking

    _print_ranking(_made_up())
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if "│" in line]
    order = ("xgradcam", f"{REFERENCE} (reference)", "gradcam")
    names = [next((n for n in order if n in line), None) for line in rows]
    assert [n for n in names if n] == list(order)  # the row stands at the bar, 0.100
    row = " ".join(next(line for line in rows if REFERENCE in line).split())
    assert "0.150 ±0.041 (best 0.100)" in row and "noise at the input size, 4" in row
    err = " ".join(err.split())
    assert f"a {REFERENCE} (reference) scores deletion AUC 0.150 ±0.041 (mean ± sd of 4 " in err
    assert "a method must beat the best, 0.100" in err
    assert "does not beat the best of the seeded noise maps" in err


def _table_cells(out: str, image: str) -> list[str]:
    """The cells of the table row whose first cell ends with ``image`` (rows folded by rich
    are joined cell by cell)."""
    lines = [[c.strip() for c in re.split(r"│", line)[1:-1]] for line in out.splitlines()
             if line.startswith("│")]  # fmt: skip
    start = next(i for i, cells in enumerate(lines) if cells[0])
    joined = [""] * len(lines[start])
    for cells in lines[start:]:
        joined = [f"{a} {b}".strip() for a, b in zip(joined, cells, strict=True)]
    assert joined[0].replace(" ", "").endswith(image), joined
    return joined


@pytest.mark.parametrize("method", ["eigencam", "gradcam"])
def test_explain_table_says_an_eigencam_map_is_not_class_specific(
    tmp_path, capsys, method, tiny_cam_file
):
    import kerascope

    model = tiny_cam_file
    image = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(image)
    argv = ["explain", str(image), "--model", str(model), "--method", method, "-o",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    cells = _table_cells(capsys.readouterr().out, "grey.png")
    e = kerascope.explain(image, model=kerascope.load_model(str(model)), method=method)
    if method == "eigencam":
        assert cells[1] == f"not class-specific (top class {e.class_name})"
        assert e.class_specific is False  # the API's JSON carries it too
    else:
        assert cells[1].startswith(e.class_name) and "class-specific" not in cells[1]
        assert e.class_specific is True


def test_an_eigencam_label_on_a_224_px_frame_is_one_readable_line():
    """The frame shows the shorter wording, on one line, no smaller than the shape-only label;
    a wide picture keeps the long wording."""
    from kerascope.cam.text import fit_bar

    long = picture_label("Egyptian_cat", 0.771, "eigencam")
    short = long.replace("the layer's main component, not class-specific", "no class")
    frame = np.full((224, 224, 3), 90, np.uint8)
    assert np.array_equal(ov.label_frame(frame, long), ov.label_frame(frame, short))
    assert np.array_equal(ov.side_by_side(frame, frame, long), ov.side_by_side(frame, frame, short))
    bar = ov.bar_height(224)
    font, lines = fit_bar(short, 224, bar, max(4, bar // 4))
    other, _ = fit_bar(picture_label("goldfish", 0.00003, "gradcam"), 224, bar, max(4, bar // 4))
    assert len(lines) == 1 and font.size >= other.size
    wide = np.full((480, 1280, 3), 90, np.uint8)
    assert not np.array_equal(ov.label_frame(wide, long), ov.label_frame(wide, short))


def test_a_224_px_video_frame_says_no_class_on_one_line(tiny_clf, tmp_path):
    import av

    import kerascope
    from kerascope.video import explain_video

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width = stream.height = 224
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(2):
            picture = rng.integers(0, 256, (224, 224, 3), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    frames = tmp_path / "frames"
    explain_video(clip, tmp_path / "out.mp4", clf=tiny_clf, method="eigencam", layout="overlay",
                  frames_dir=frames)  # fmt: skip
    with Image.open(sorted(frames.iterdir())[0]) as img:
        drawn = np.asarray(img.convert("RGB"))
    with av.open(str(clip)) as video:  # the frame as the video's reader decodes it
        first = next(video.decode(video=0)).to_ndarray(format="rgb24")
    e = kerascope.explain(first, model=tiny_clf, method="eigencam")
    long = picture_label(e.class_name, e.probability, "eigencam")
    short = long.replace("the layer's main component, not class-specific", "no class")
    bar = ov.bar_height(224)
    ink = drawn[:bar].max(axis=2) > 200  # white text over the half-darkened frame
    off = {w: np.mean(ink != (_bar_of(w, 224, bar) > 200)) for w in (long, short)}
    assert off[short] < off[long] / 2, off


def _bar_of(text: str, width: int, height: int) -> np.ndarray:
    """``text`` itself drawn as a label bar draws a label (no shorter wording): grey levels."""
    from PIL import ImageDraw

    from kerascope.cam.text import fit_bar

    bar = Image.new("L", (width, height), 0)
    draw, pad = ImageDraw.Draw(bar), max(4, height // 4)
    font, lines = fit_bar(text, width, height, pad)
    box = draw.multiline_textbbox((0, 0), "\n".join(lines), font=font, spacing=0)
    y = (height - (box[3] - box[1])) // 2 - box[1]
    draw.multiline_text((pad, y), "\n".join(lines), fill=255, font=font, spacing=0)
    return np.asarray(bar)


def test_pictures_name_classes_as_text_and_tables_as_keras_does():
    """One rule: pictures (labels, the --compare grid) say "tiger cat"; tables keep Keras's
    ``tiger_cat``, which --class takes and users grep."""
    comparison = Comparison("cat.jpg", 282, "tiger_cat", 0.4, "deletion", [])
    assert grid_header(comparison).startswith("tiger cat 40.0%, ranked by deletion AUC")
    assert picture_label("tiger_cat", 0.4, "gradcam").startswith("tiger cat 40.0%")
