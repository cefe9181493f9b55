"""Heatmap drawing: colormap, blend, upsampling, layouts and atomic saving."""

from __future__ import annotations

import os

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
    lut = ov.colormap_lut("jet")
    assert out[0].tolist() == [lut[0].tolist(), lut[0].tolist(), lut[255].tolist()]


def test_unknown_colormap_is_a_clear_error():
    with pytest.raises(ValueError, match="colormap"):
        ov.colormap_lut("no-such-map")


def test_overlay_keeps_the_photo_where_the_heat_is_zero(cat):
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[:, 5:] = 1.0
    out = ov.overlay(cat, heat, alpha=0.5)
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
