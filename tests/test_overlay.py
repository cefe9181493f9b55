"""Heatmap drawing: colormap, blend, upsampling, layouts and atomic saving."""

from __future__ import annotations

import os
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from tests.conftest import load_rgb


@pytest.fixture(scope="module")
def cat(photo_paths) -> np.ndarray:
    return load_rgb(photo_paths["chelsea"])  # (300, 451, 3)


def test_jet_endpoints_are_dark_blue_and_dark_red():
    lut = ov.colormap_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 128]
    assert lut[255].tolist() == [128, 0, 0]
    middle = lut[128].astype(int)  # jet passes through green-yellow in the middle
    assert middle[1] > 200 and middle[1] > middle[2]


@pytest.mark.parametrize("name", ov.COLORMAPS)
def test_colorize_maps_range_through_the_table(name):
    heat = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    out = ov.colorize(heat, name)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(-1, 3), ov.colormap_lut(name))


def test_colorize_clips_and_ignores_nan():
    out = ov.colorize(np.array([[-1.0, np.nan, 2.0]], dtype=np.float32))
    lut = ov.colormap_lut(ov.DEFAULT_COLORMAP)
    assert out[0].tolist() == [lut[0].tolist(), lut[0].tolist(), lut[255].tolist()]


def test_unknown_colormap_is_a_clear_error():
    with pytest.raises(ValueError, match="colormap"):
        ov.colormap_lut("no-such-map")


def test_overlay_keeps_the_photo_where_the_heat_is_zero(cat):
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[:, 5:] = 1.0
    out = ov.overlay(cat, heat, alpha=0.5, colormap="jet")
    assert out.shape == cat.shape and out.dtype == np.uint8
    # Up to the centre of column 4 (x = 4.5 / 7 * 451 = 290) the upsampled heat is exactly 0,
    # so the photo is untouched there.
    np.testing.assert_array_equal(out[:, :285], cat[:, :285])
    # Past the centre of column 5 the heat is 1: half photo, half jet's dark red.
    expected = (cat[:, 360:].astype(int) + np.array([128, 0, 0])) / 2
    np.testing.assert_allclose(out[:, 360:], expected, atol=1.5)
    np.testing.assert_array_equal(ov.overlay(cat, np.ones((7, 7)), alpha=0.0), cat)


def test_overlay_rejects_bad_inputs(cat):
    with pytest.raises(ValueError, match="alpha"):
        ov.overlay(cat, np.zeros((7, 7)), alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        ov.overlay(cat.astype(np.float32), np.zeros((7, 7)))
    with pytest.raises(ValueError, match="2-D"):
        ov.overlay(cat, np.zeros((1, 7, 7)))


@pytest.mark.parametrize("cell", [(0, 0), (1, 5), (3, 3), (6, 2)])
def test_upsample_keeps_the_peak_in_its_cell(cell):
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[cell] = 1.0
    big = ov.upsample(heat, (224, 224))
    assert big.shape == (224, 224) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    y, x = np.unravel_index(np.argmax(big), big.shape)
    assert (y // 32, x // 32) == cell  # 224 / 7 = 32 px per cell
    assert big[cell[0] * 32 + 16, cell[1] * 32 + 16] > 0.95


def test_upsample_to_a_non_square_frame_is_smooth():
    heat = np.random.default_rng(0).random((7, 7), dtype=np.float32)
    big = ov.upsample(heat, (240, 320))
    assert big.shape == (240, 320)
    assert np.abs(np.diff(big, axis=1)).max() < 0.1  # bilinear: no blocks, no jumps


def test_side_by_side_layout(cat):
    heat = np.eye(7, dtype=np.float32)
    blended = ov.overlay(cat, heat)
    out = ov.side_by_side(cat, blended, "tabby 87.3%")
    bar = ov.bar_height(300)
    assert out.shape == (300 + bar, 2 * 451, 3) and bar % 2 == 0
    np.testing.assert_array_equal(out[bar:, :451], cat)
    np.testing.assert_array_equal(out[bar:, 451:], blended)
    text = out[:bar]
    assert text.max() == 255 and np.median(text) == 0  # white text on a black bar


def test_label_frame_keeps_size_and_only_touches_the_corner(cat):
    out = ov.label_frame(cat, "tabby 87.3%")
    assert out.shape == cat.shape
    bar = ov.bar_height(300)
    np.testing.assert_array_equal(out[bar:], cat[bar:])
    np.testing.assert_array_equal(out[:, -100:], cat[:, -100:])  # short label: right side clear
    assert (out[:bar, :60] != cat[:bar, :60]).any()


def test_save_jpeg_writes_a_readable_file(tmp_path, cat):
    path = tmp_path / "cat-output.jpg"
    ov.save_jpeg(cat, path)
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (451, 300)
    assert os.listdir(tmp_path) == ["cat-output.jpg"]


def test_save_jpeg_leaves_no_partial_file_on_error(tmp_path, monkeypatch, cat):
    path = tmp_path / "cat-output.jpg"
    ov.save_jpeg(cat, path)
    before = path.read_bytes()

    def fail(self, fp, *args, **kwargs):
        fp.write(b"\xff\xd8 half a jpeg")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        ov.save_jpeg(np.zeros_like(cat), path)
    assert os.listdir(tmp_path) == ["cat-output.jpg"]  # no .partial left behind
    assert path.read_bytes() == before  # the earlier result is intact


# --- the default colormap: measured on real photos ----------------------------------------------


def _blob(size: int = 7, sigma: float = 1.3) -> np.ndarray:
    """A Grad-CAM-like map: one smooth peak in the middle, exactly 0 at the corners."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return ((blob - blob.min()) / (blob.max() - blob.min())).astype(np.float32)


def _delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIE76 colour difference (CIE Lab) between two uint8 RGB images."""
    from skimage.color import rgb2lab

    return np.linalg.norm(rgb2lab(a) - rgb2lab(b), axis=-1)


def _contrast_by_heat(image: np.ndarray, colormap: str, edges=(0.2, 0.4, 0.6, 0.8, 0.9, 1.01)):
    """Mean ΔE between overlay (default alpha) and photo in bands of heat, coldest first."""
    big = ov.upsample(_blob(), image.shape[:2])
    diff = _delta_e(ov.overlay(image, _blob(), colormap=colormap), image)
    return [float(diff[(big >= lo) & (big < hi)].mean()) for lo, hi in pairwise(edges)]


@pytest.fixture(scope="module", params=["chelsea", "dark chelsea", "dark astronaut"])
def photo(request, photo_paths) -> np.ndarray:
    """The red/brown tabby, and photos at a quarter of their brightness (dark subjects)."""
    name = request.param.removeprefix("dark ")
    image = load_rgb(photo_paths[name])
    if request.param.startswith("dark"):
        image = (image.astype(np.float32) * 0.25).round().astype(np.uint8)
    return image


def test_default_colormap_shows_the_hottest_region_better_than_jet(photo):
    """Where the model looked most (heat >= 0.9) the default differs more from the photo than
    jet, whose dark-red end melts into a brown cat and into shadows."""
    default = _contrast_by_heat(photo, ov.DEFAULT_COLORMAP)
    jet = _contrast_by_heat(photo, "jet")
    assert default[-1] > jet[-1]
    # ... and the hotter, the more visible: the eye is drawn to the peak, not to middling heat.
    assert all(np.diff(default) > 0)


def test_default_colormap_leaves_cold_pixels_untouched(cat):
    big = ov.upsample(_blob(), cat.shape[:2])
    out = ov.overlay(cat, _blob())
    np.testing.assert_array_equal(out[big == 0], cat[big == 0])
    assert (big == 0).sum() > 1000  # the corners of the blob really are cold


def test_builtin_default_works_without_matplotlib_and_matches_it(monkeypatch):
    import sys

    matplotlib = pytest.importorskip("matplotlib")
    ov.colormap_lut.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
            lut = ov.colormap_lut(ov.DEFAULT_COLORMAP)
            with pytest.raises(ValueError, match="install matplotlib"):
                ov.colormap_lut("magma")
    finally:
        ov.colormap_lut.cache_clear()
    reference = matplotlib.colormaps[ov.DEFAULT_COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(lut - reference).max() <= 3.5  # 33 control points: within 3/255
    from skimage.color import rgb2lab

    # Perceptually ordered: lighter with every step (up to 8-bit rounding), dark to light.
    lightness = rgb2lab(lut[None].astype(np.uint8))[0, :, 0]
    assert np.diff(lightness).min() > -0.1 and lightness[-1] - lightness[0] > 70


# --- colour bar -------------------------------------------------------------------------------


def _gradient_run(row: np.ndarray, colormap: str) -> tuple[slice, np.ndarray]:
    """The columns of ``row`` (W, 3) drawn from ``colormap``'s table, and their table indices."""
    lut = ov.colormap_lut(colormap).astype(int)
    dist = np.abs(row.astype(int)[:, None, :] - lut[None]).max(axis=-1)  # (W, 256)
    on_map = np.flatnonzero(dist.min(axis=1) <= 2)
    assert on_map.size, "no colormap colours in the bar"
    run = slice(int(on_map[0]), int(on_map[-1]) + 1)
    return run, dist[run].argmin(axis=1)


@pytest.mark.parametrize("colormap", [ov.DEFAULT_COLORMAP, "jet"])
def test_side_by_side_colorbar_runs_from_low_to_high_under_the_overlay(cat, colormap):
    blended = ov.overlay(cat, _blob(), colormap=colormap)
    out = ov.side_by_side(cat, blended, "tabby 87.3%", colorbar=True, colormap=colormap)
    bar = ov.bar_height(300)
    assert out.shape == (300 + 2 * bar, 2 * 451, 3)
    np.testing.assert_array_equal(out[:-bar], ov.side_by_side(cat, blended, "tabby 87.3%"))
    key = out[-bar:]
    assert key[:, :451].max() == 0  # nothing under the original
    run, index = _gradient_run(key[bar // 2, 451:], colormap)
    assert run.stop - run.start > 451 // 2  # most of the overlay's width
    assert index[0] <= 2 and index[-1] >= 253 and all(np.diff(index) >= 0)
    under = key[:, 451:]
    assert under[:, : run.start].max() == 255 and under[:, run.stop :].max() == 255  # low, high


def test_colorbar_without_room_for_words_is_the_gradient_alone():
    key = ov.colorbar(40, 20)
    run, index = _gradient_run(key[10], ov.DEFAULT_COLORMAP)
    assert (run.start, run.stop) == (0, 40) and index[0] == 0 and index[-1] == 255


def test_label_frame_colorbar_sits_in_the_bottom_right_corner(cat):
    out = ov.label_frame(cat, "tabby", colorbar=True)
    bar = ov.bar_height(300)
    assert out.shape == cat.shape
    np.testing.assert_array_equal(out[bar:-bar], cat[bar:-bar])
    np.testing.assert_array_equal(out[-bar:, : 451 - 451 // 3], cat[-bar:, : 451 - 451 // 3])
    run, index = _gradient_run(out[-bar // 2, 451 - 451 // 3 :], ov.DEFAULT_COLORMAP)
    assert index[0] <= 2 and index[-1] >= 253


# --- empty maps -------------------------------------------------------------------------------


def test_empty_map_is_flagged_and_said_in_the_label(cat):
    zero = np.zeros((7, 7), dtype=np.float32)
    assert ov.is_empty(zero) and ov.is_empty(np.full((7, 7), np.nan))
    assert not ov.is_empty(_blob()) and not ov.is_empty(np.eye(7) * 0.01)
    assert ov.mark_empty("tabby 87.3%", _blob()) == "tabby 87.3%"
    label = ov.mark_empty("space shuttle 0.0%", zero)
    assert label.startswith("space shuttle 0.0%") and ov.EMPTY_NOTICE in label
    # The overlay of an empty map is the photo itself: only the label tells them apart.
    np.testing.assert_array_equal(ov.overlay(cat, zero), cat)
    plain = ov.side_by_side(cat, cat, "space shuttle 0.0%")
    marked = ov.side_by_side(cat, cat, label)
    bar = ov.bar_height(300)
    np.testing.assert_array_equal(marked[bar:], plain[bar:])
    text_end = np.flatnonzero(plain[:bar].max(axis=(0, 2)))[-1]
    assert marked[:bar, text_end + 10 :].max() == 255  # the notice is written after the label


@pytest.mark.parametrize("size", [(60, 80), (900, 1300)])  # cached label bar, and drawn in place
@pytest.mark.parametrize("colorbar", [False, True])
def test_pillow_picture_is_the_numpy_picture(chelsea, size, colorbar):
    """explain's picture threads draw in Pillow (no NumPy copies, outside the GIL): the same
    pixels as `overlay` + `side_by_side`."""
    from PIL import Image

    from kerascope.cam.overlay import overlay_image, side_by_side_image
    from kerascope.images import resize

    photo = resize(chelsea, size)
    heat = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    label = "tabby 87.3% (gradcam)"
    blended = ov.overlay(photo, heat, 0.4, "viridis")
    expected = ov.side_by_side(photo, blended, label, colorbar=colorbar, colormap="viridis")
    base = Image.fromarray(photo)
    drawn = overlay_image(base, heat, 0.4, "viridis")
    np.testing.assert_array_equal(np.asarray(drawn), blended)
    np.testing.assert_array_equal(blended, _point_overlay(photo, heat, 0.4, "viridis"))
    picture = side_by_side_image(base, drawn, label, colorbar=colorbar, colormap="viridis")
    np.testing.assert_array_equal(np.asarray(picture), expected)


def _point_overlay(photo: np.ndarray, heat: np.ndarray, alpha: float, colormap: str):
    """The overlay as first written (Image.point per channel, then merge): the reference the
    palette lookups of `overlay_image` must match pixel for pixel."""
    from PIL import Image

    height, width = photo.shape[:2]
    heat8 = (np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    level = Image.fromarray(heat8).resize((width, height), Image.Resampling.BILINEAR)
    lut = ov.colormap_lut(colormap)
    color = Image.merge("RGB", [level.point(lut[:, c].tolist()) for c in range(3)])
    mask = level.point([round(v * alpha) for v in range(256)])
    return np.asarray(Image.composite(color, Image.fromarray(photo), mask))
