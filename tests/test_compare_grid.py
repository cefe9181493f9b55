"""The ``explain --compare`` grid keeps every text inside its panel, whatever the picture.

Before, "#13 guidedbackprop (fails sanity check)" (326 px at 18 px) ran past its 320 px panel
into the next one, the ROAD line under it (325 px) too, and a tall, thin picture made a panel a
few pixels wide with every word running across its neighbours. The grid is drawn here from
made-up scores (no model), so the layout alone is tested.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kerascope.cam.compare import (
    _BACKGROUND,
    _GAP,
    MIN_PANEL_WIDTH,
    Comparison,
    MethodScore,
    draw_grid,
    fit_text,
)
from kerascope.cam.faithfulness import Faithfulness
from kerascope.cam.methods import METHODS, get_method

_OLD_TITLE_BAND = 23  # px above the overlay a one-line 18 px title took (and always takes)


def _comparison(count: int) -> tuple[Comparison, dict[str, np.ndarray]]:
    """``count`` methods after CAM, ranked in METHODS order by deletion, with every score line
    shown (ROAD included, its line the widest), random 7x7 maps, and the real sanity verdicts."""
    rng = np.random.default_rng(0)
    rows, maps = [], {}
    for i, name in enumerate(list(METHODS)[1 : 1 + count]):
        method = get_method(name)
        f = Faithfulness(0, 0.5, deletion=0.1 + i / 100, insertion=0.9, road_morf=0.123,
                         road_lerf=0.321, drop=0.25, increase=False)  # fmt: skip
        rows.append(MethodScore(method.name, sanity=bool(method.sanity), faithfulness=f))
        maps[method.name] = rng.random((7, 7)).astype(np.float32)
    return Comparison("cat.jpg", 281, "tabby", 0.5, "deletion", rows), maps


def _picture(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     np.full_like(x, 90)], -1).astype(np.uint8)  # fmt: skip


@pytest.mark.parametrize(
    "shape",
    [(320, 320), (240, 320), (320, 213), (320, 100), (320, 12), (8, 320)],
    ids=["square", "landscape", "portrait", "tall", "sliver", "strip"],
)
def test_no_text_pixel_crosses_a_panel_boundary(shape):
    """13 methods on a 4x4 grid: "#13 guidedbackprop (fails sanity check)" among the titles.
    The gaps beside every panel (between columns, and the canvas's outer margins) hold no
    drawn pixel from the title band of the first row down; the outer margins none at all
    (the header wraps to the canvas)."""
    comparison, maps = _comparison(13)  # guidedbackprop is 13th, failing sanity
    assert [m.method for m in comparison.ranking()][12] == "guidedbackprop"
    grid, boxes = draw_grid(comparison, _picture(*shape), maps, 0.4, "jet")
    height, width = shape
    panel_w = max(width, MIN_PANEL_WIDTH)
    cols = math.ceil(math.sqrt(len(boxes)))
    assert grid.shape[1] == cols * panel_w + (cols + 1) * _GAP
    first_title = min(top for _, (_, top, _, _) in boxes) - _OLD_TITLE_BAND
    for c in range(cols + 1):
        lo = c * (panel_w + _GAP)
        gap = grid[:, lo : lo + _GAP]
        if 0 < c < cols:  # the header may cross inner gaps above the panels
            gap = gap[first_title:]
        drawn = np.argwhere(np.any(gap != _BACKGROUND, axis=-1))
        assert drawn.size == 0, f"{shape}: text in gap {c} at (y, x) {drawn[:3].tolist()}"
    for i, (_, (left, top, right, bottom)) in enumerate(boxes):  # the overlay, in its panel
        panel_left = _GAP + (i % cols) * (panel_w + _GAP)
        assert (right - left, bottom - top) == (width, height)
        assert panel_left <= left and right <= panel_left + panel_w


TITLES = ["#1 gradcam", "#13 guidedbackprop (fails sanity check)",
          "#2 ig:steps=64,baseline=blurred (fails sanity check)"]  # fmt: skip


@pytest.mark.parametrize("width", [320, 213, 160, 61, 20])
@pytest.mark.parametrize("title", TITLES)
def test_a_title_is_wrapped_or_shrunk_never_cut(title, width):
    """Measured with Pillow at the font the grid draws with: every line fits the panel, and
    the lines hold every character of the title, in order."""
    font, lines = fit_text(title, width, 18)
    assert all(max(font.getlength(line), font.getbbox(line)[2]) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == title.replace(" ", "")
    assert font.size >= 10
    if font.getlength(title) <= width:
        assert lines == [title]


def test_a_title_stays_whole_and_large_where_it_can():
    """At 320 px the long title shrinks a little onto one line (17 px); a short one keeps 18
    px; in a 213 px panel it wraps between words at 18 px, the verdict on a line of its own."""
    font, lines = fit_text("#13 guidedbackprop (fails sanity check)", 320, 18)
    assert len(lines) == 1 and 14 <= font.size < 18
    assert fit_text("#1 gradcam", 320, 18)[0].size == 18
    font, lines = fit_text("#13 guidedbackprop (fails sanity check)", 213, 18)
    assert font.size == 18 and lines == ["#13 guidedbackprop", "(fails sanity check)"]
    road = "ROAD MoRF +0.123  ROAD LeRF +0.321  ROAD +0.099"  # 325 px at 13 px: two lines
    assert fit_text(road, 320, 13, 13, shrink=1.0)[1] == [
        "ROAD MoRF +0.123  ROAD LeRF +0.321",
        "ROAD +0.099",
    ]
