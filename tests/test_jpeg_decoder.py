"""The simplejpeg decoder (`kerascope.images.jpeg`): Pillow's pixels exactly, on the JPEGs both
decode alike; everything else, and every file libjpeg-turbo warns about, left to Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.errors import KerascopeError
from kerascope.images import ImageError, decode_image, jpeg, load_image

pytest.importorskip("simplejpeg")


class _Counting:
    """simplejpeg, counting its decodes and the ones it refused."""

    def __init__(self, module):
        self.module, self.calls, self.refused = module, 0, 0

    def decode_jpeg(self, *args, **kwargs):
        self.calls += 1
        try:
            return self.module.decode_jpeg(*args, **kwargs)
        except ValueError:
            self.refused += 1
            raise


@pytest.fixture
def spy(monkeypatch) -> _Counting:
    counting = _Counting(jpeg.simplejpeg)
    monkeypatch.setattr(jpeg, "simplejpeg", counting)
    monkeypatch.delenv(jpeg.DECODER_ENV, raising=False)
    return counting


def _with_pillow(monkeypatch, fn):
    monkeypatch.setenv(jpeg.DECODER_ENV, "pillow")
    try:
        return fn()
    finally:
        monkeypatch.delenv(jpeg.DECODER_ENV)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, photo_paths) -> dict[str, Path]:
    """Real photos as the JPEGs people have: three chroma subsamplings, progressive, grey,
    odd sizes, and a 12 MP one large enough for every DCT scale."""
    folder = tmp_path_factory.mktemp("jpegs")
    photos = {k: Image.open(photo_paths[k]).convert("RGB") for k in ("chelsea", "astronaut")}
    out = {}
    for name, photo in photos.items():
        for sub in (0, 1, 2):
            for progressive in (False, True):
                key = f"{name}-{sub}{'-progressive' if progressive else ''}"
                out[key] = folder / f"{key}.jpg"
                photo.save(out[key], quality=90, subsampling=sub, progressive=progressive)
        out[f"{name}-grey"] = folder / f"{name}-grey.jpg"
        photo.convert("L").save(out[f"{name}-grey"], quality=85)
        out[f"{name}-odd"] = folder / f"{name}-odd.jpg"
        photo.crop((0, 0, photo.width - 3, photo.height - 5)).save(out[f"{name}-odd"])
    out["12mp"] = folder / "12mp.jpg"
    photos["astronaut"].resize((4001, 2999), Image.BILINEAR).save(out["12mp"], quality=85)
    return out


SIZES = [{}, {"min_size": (224, 224)}, {"min_size": (64, 64)}, {"max_side": 300}]


@pytest.mark.parametrize("kwargs", SIZES, ids=["full", "224", "64", "max300"])
def test_same_pixels_as_pillow_on_real_photos(jpegs, spy, monkeypatch, kwargs):
    for key, path in jpegs.items():
        before = spy.calls
        fast = load_image(path, **kwargs)
        assert spy.calls == before + 1 and not spy.refused, key  # simplejpeg decoded it
        reference = _with_pillow(monkeypatch, lambda p=path: load_image(p, **kwargs))
        assert fast.dtype == np.uint8 and fast.flags.writeable and fast.flags.c_contiguous
        np.testing.assert_array_equal(fast, reference, err_msg=f"{key} {kwargs}")


def test_dct_scaling_is_the_scale_pillow_draft_picks(jpegs, spy):
    """4001x2999 for a 224 input: floor 448, so 1/4 (1001x750; 1/8 would be under 448)."""
    assert jpeg.draft_scale((4001, 2999), 448) == 4
    assert jpeg.draft_scale((4001, 2999), 128) == 8
    assert jpeg.draft_scale((500, 375), 448) == 1 and jpeg.draft_scale((500, 375), None) == 1
    with Image.open(jpegs["12mp"]) as img:
        assert jpeg.decode(img, 4).shape == (750, 1001, 3)
    assert load_image(jpegs["12mp"], min_size=(224, 224)).shape == (750, 1001, 3)


def test_uploads_decode_through_it_too(jpegs, spy, monkeypatch):
    data = jpegs["chelsea-2"].read_bytes()
    fast = decode_image(io.BytesIO(data), "upload.jpg", max_side=256)
    assert spy.calls == 1
    reference = _with_pillow(
        monkeypatch, lambda: decode_image(io.BytesIO(data), "upload.jpg", max_side=256)
    )
    np.testing.assert_array_equal(fast, reference)


def test_exif_rotation_and_cmyk_stay_with_pillow(tmp_path, photo_paths, spy):
    photo = Image.open(photo_paths["chelsea"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    rotated = tmp_path / "phone.jpg"
    photo.save(rotated, exif=exif, quality=95)
    upright = load_image(rotated)
    assert upright.shape == (photo.width, photo.height, 3)  # turned upright by Pillow
    cmyk = tmp_path / "print.jpg"
    photo.convert("CMYK").save(cmyk, quality=95)
    colour = load_image(cmyk)
    assert colour.shape == (photo.height, photo.width, 3)
    assert np.abs(colour.astype(int) - np.asarray(photo)).mean() < 6  # still the cat's colours
    assert spy.calls == 0


def test_a_file_libjpeg_turbo_warns_about_is_decoded_by_pillow(jpegs, tmp_path, spy, monkeypatch):
    """Junk bytes between segments: libjpeg-turbo warns (simplejpeg refuses, strict), Pillow
    decodes it; the result is Pillow's."""
    data = jpegs["chelsea-2"].read_bytes()
    scan = data.index(b"\xff\xda")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(data[:scan] + b"\x00\x00" + data[scan:])
    decoded = load_image(junk)
    assert spy.calls == 1 and spy.refused == 1
    np.testing.assert_array_equal(decoded, _with_pillow(monkeypatch, lambda: load_image(junk)))


def test_a_file_much_larger_than_its_picture_is_not_read_whole(jpegs, tmp_path, spy):
    """Megabytes after the picture's end: Pillow decodes it reading only the picture, so a
    small picture in a huge file never becomes a huge read."""
    data = jpegs["chelsea-2"].read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + bytes(3 << 20))
    decoded = load_image(padded)
    assert spy.calls == 0
    np.testing.assert_array_equal(decoded, load_image(jpegs["chelsea-2"]))
    assert spy.calls == 1  # the photo itself does take the fast path


def test_a_truncated_photo_fails_as_with_pillow(jpegs, tmp_path, spy, monkeypatch):
    data = jpegs["astronaut-2"].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError) as fast:
        load_image(cut)
    assert spy.refused == 1
    with pytest.raises(ImageError) as reference:
        _with_pillow(monkeypatch, lambda: load_image(cut))
    assert fast.value.reason == reference.value.reason
    assert "truncated" in fast.value.reason


def test_the_setting(jpegs, spy, monkeypatch):
    monkeypatch.setenv(jpeg.DECODER_ENV, "pillow")
    assert jpeg.jpeg_decoder() == "pillow"
    load_image(jpegs["chelsea-0"])
    assert spy.calls == 0
    monkeypatch.setenv(jpeg.DECODER_ENV, "SimpleJPEG")
    assert jpeg.jpeg_decoder() == "simplejpeg"
    monkeypatch.setenv(jpeg.DECODER_ENV, "turbo")
    with pytest.raises(KerascopeError, match="KERASCOPE_JPEG_DECODER='turbo' is not one of auto"):
        load_image(jpegs["chelsea-0"])  # refused as a setting, not as one bad photo
    monkeypatch.setattr(jpeg, "simplejpeg", None)  # not installed
    monkeypatch.setenv(jpeg.DECODER_ENV, "simplejpeg")
    with pytest.raises(KerascopeError, match="pip install simplejpeg"):
        jpeg.jpeg_decoder()
    monkeypatch.delenv(jpeg.DECODER_ENV)
    assert jpeg.jpeg_decoder() == "pillow"  # auto without it: Pillow, which always works
    assert load_image(jpegs["chelsea-0"]).shape == (300, 451, 3)
