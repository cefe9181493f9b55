"""A picture over the drawing cap (`cam.save.OUTPUT_MAX_SIDE`) costs explain no full decode.

Before, a 12000x3000 panorama was decoded for the model (reduced in the DCT, as classify
decodes it) and then again in full, 36 MP, only to be scaled down to 4096x1024 for its picture;
a panorama small enough to be kept whole from the model's decode was decoded a second time
anyway. Now the picture's decode is reduced to no less than the cap, and a kept decode over the
cap is scaled down itself. The model's input is classify's decode, unchanged: one shared
decode at the picture's size would move the class's probability (`serve.uploads._prepare`).
The cap is lowered here so the pictures stay small.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import kerascope.images.decode as decode_module
from kerascope.cam import save
from kerascope.images import jpeg, load_image, resize

CAP = 512


@pytest.fixture
def scales(monkeypatch):
    """The DCT scale each JPEG decode asked for (both decoders pass through `jpeg.decode`)."""
    asked: list[int] = []
    real = jpeg.decode

    def spy(img, scale):
        asked.append(scale)
        return real(img, scale)

    monkeypatch.setattr(jpeg, "decode", spy)
    return asked


@pytest.fixture
def opened(monkeypatch):
    """The files decoded, one entry per decode."""
    names: list[str] = []
    real = decode_module._open_and_decode

    def spy(source, name, *args):
        names.append(name)
        return real(source, name, *args)

    monkeypatch.setattr(decode_module, "_open_and_decode", spy)
    return names


def _panorama(chelsea: np.ndarray, path, size: tuple[int, int]) -> str:
    """The real cat photo stretched to ``size`` (width, height), as a JPEG."""
    Image.fromarray(chelsea).resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return str(path)


@pytest.fixture
def drawn(monkeypatch):
    """The originals drawn, as the picture threads hand them to the layout (before JPEG)."""
    bases: list[np.ndarray] = []
    real = save.side_by_side_image

    def spy(base, *args, **kwargs):
        bases.append(np.asarray(base, dtype=np.int16))
        return real(base, *args, **kwargs)

    monkeypatch.setattr(save, "side_by_side_image", spy)
    return bases


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_a_picture_over_the_cap_is_decoded_reduced_once_for_drawing(
    tmp_path, chelsea, tiny_clf, monkeypatch, scales, opened, drawn, decoder
):
    """2400x600 drawn at 512 px: the model's decode at 1/8 (short side >= 2 x 32 px), the
    picture's at 1/4 (600x150, long side still >= 512), never at full size; the original
    drawn is the full decode scaled down, up to the DCT's filter (under a level on average)."""
    if decoder == "simplejpeg" and jpeg.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    monkeypatch.setenv(jpeg.DECODER_ENV, decoder)
    monkeypatch.setattr(save, "OUTPUT_MAX_SIDE", CAP)
    path = _panorama(chelsea, tmp_path / "pano.jpg", (2400, 600))
    saved = save.save_explanations([path], tmp_path / "out", tiny_clf, batch_size=1, workers=1)
    assert saved[0].ok
    assert opened == [path, path] and sorted(scales) == [4, 8]  # before: [1, 8]
    reference = resize(load_image(path), (128, CAP))  # what was drawn before
    assert drawn[0].shape == reference.shape
    diff = np.abs(drawn[0] - reference)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


def test_a_kept_picture_over_the_cap_is_not_decoded_again(
    tmp_path, chelsea, tiny_clf, monkeypatch, opened, drawn
):
    """1200x100: short enough to be decoded whole for a 32 px input, and kept; before, being
    over the cap sent it to a second decode. Now that one decode is scaled down for drawing, to
    the size and pixels the second decode gave."""
    monkeypatch.setattr(save, "OUTPUT_MAX_SIDE", CAP)
    path = _panorama(chelsea, tmp_path / "strip.jpg", (1200, 100))
    saved = save.save_explanations([path], tmp_path / "out", tiny_clf, batch_size=1, workers=1)
    assert saved[0].ok and opened == [path]  # before: [path, path]
    reference = resize(load_image(path), (43, CAP))  # 100 x 512 / 1200 = 42.7
    np.testing.assert_array_equal(drawn[0], reference)  # the same scaling of the same decode


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_load_image_with_max_side_decodes_no_larger_than_needed(
    tmp_path, chelsea, monkeypatch, scales, decoder
):
    """A JPEG at least twice the side asked for is reduced in the DCT (by the largest power of
    two keeping the long side >= max_side), then scaled to the very size a full decode is
    scaled to (computed from the file's size, not the reduced one's), within rounding."""
    if decoder == "simplejpeg" and jpeg.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    monkeypatch.setenv(jpeg.DECODER_ENV, decoder)
    path = _panorama(chelsea, tmp_path / "odd.jpg", (1805, 601))  # odd: 1/4 is 452x151
    reduced = load_image(path, max_side=450)
    assert scales == [4]  # before: 1, the whole 1805x601
    full = load_image(path)
    reference = resize(full, (150, 450))  # 601 x 450 / 1805 = 149.8
    assert reduced.shape == reference.shape == (150, 450, 3)
    diff = np.abs(reduced.astype(np.int16) - reference)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4
    scales.clear()
    assert load_image(path, max_side=1000).shape == (333, 1000, 3) and scales == [1]
    png = tmp_path / "odd.png"  # other formats decode whole, then scale as before
    with Image.open(path) as img:
        img.save(png)
    np.testing.assert_array_equal(
        load_image(png, max_side=450), resize(load_image(png), (150, 450))
    )
    assert decode_module.side_scale((12000, 3000), 4096) == 2  # the panorama: 6000x1500
    assert decode_module.side_scale((12000, 5), 1000) == 4  # a short side of 5 stays >= 1 px
    assert decode_module.side_scale((4000, 3000), None) == 1


def test_a_long_side_of_exactly_twice_the_cap_is_not_left_a_row_too_tall():
    """The review found 8192x3001 at max_side 4096 decoded at 1/2 to 4096x1501 and returned as
    it was: a row taller than the full decode scaled (1500), its last row half padding."""
    assert decode_module.side_scale((8192, 3001), 4096) == 1
    assert decode_module.side_scale((8194, 3001), 4096) == 2
