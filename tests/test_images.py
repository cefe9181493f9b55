"""Input decoding: every pixel format to RGB uint8, and every bad input to a readable error."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from kerascope import images
from kerascope.images import (
    MAX_PIXELS,
    ImageError,
    load_image,
    to_rgb,
)


@pytest.fixture
def chelsea_jpeg(tmp_path: Path, chelsea: np.ndarray) -> Path:
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(path, quality=95)
    return path


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- pixel formats -------------------------------------------------------------------------


def test_rgb_photo_round_trips_exactly(tmp_path, chelsea):
    out = load_image(_save(tmp_path, Image.fromarray(chelsea), "c.png"))
    assert out.dtype == np.uint8 and out.shape == chelsea.shape and out.flags.writeable
    np.testing.assert_array_equal(out, chelsea)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_image(_save(tmp_path, Image.fromarray(gray, "L"), "g.png"))
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_one_bit_is_black_and_white(tmp_path):
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    out = load_image(_save(tmp_path, img, "b.png"))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("name", ["g16.png", "g16.tif", "g16.pgm"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, name):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(values), name)
    with Image.open(path) as img:  # PNG/TIFF give I;16, PGM gives I: both paths are exercised
        assert img.mode in ("I;16", "I")
    out = load_image(path)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out == out[..., :1]).all()


def test_16bit_big_endian_mode():
    values = np.array([[0, 32768, 65535]], dtype=">u2")
    img = Image.frombytes("I;16B", (3, 1), values.tobytes())
    assert np.asarray(to_rgb(img))[0, :, 1].tolist() == [0, 128, 255]


def test_32bit_int_mode_with_8bit_values_is_not_darkened():
    img = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)).convert("I")
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),
        ([0.0, 100.0, 255.0], [0, 100, 255]),
        ([-1, 0, 3], [0, 64, 255]),
    ],
)
def test_float_tiff_is_scaled(tmp_path, values, expected):
    path = _save(tmp_path, Image.fromarray(np.array([values], dtype=np.float32)), "f.tif")
    assert load_image(path)[0, :, 2].tolist() == expected


def test_rgba_transparent_pixels_become_white(tmp_path):
    rgba = np.array(
        [[[12, 34, 56, 0], [200, 100, 50, 255], [0, 0, 0, 128]]], dtype=np.uint8
    )  # the transparent pixel holds garbage colour on purpose
    out = load_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 100, 50]
    assert out[0, 2].tolist() == [127, 127, 127]


def test_la_composited_on_white(tmp_path):
    la = Image.merge("LA", [Image.new("L", (2, 1), 40), Image.frombytes("L", (2, 1), b"\x00\xff")])
    out = load_image(_save(tmp_path, la, "la.png"))
    assert out[0].tolist() == [[255, 255, 255], [40, 40, 40]]


def test_rgb_png_with_trns_colour_is_white(tmp_path):
    img = Image.fromarray(np.array([[[1, 2, 3], [9, 8, 7]]], dtype=np.uint8))
    out = load_image(_save(tmp_path, img, "t.png", transparency=(1, 2, 3)))
    assert out[0].tolist() == [[255, 255, 255], [9, 8, 7]]


def test_premultiplied_la():
    la = Image.new("La", (1, 1))
    la.putpixel((0, 0), (40, 128))  # premultiplied grey 40 at alpha 128: 40 + (255 - 128)
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [167, 167, 167]


def test_premultiplied_modes():
    rgba = Image.fromarray(np.array([[[100, 50, 0, 255], [9, 9, 9, 0]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba.convert("RGBa")))[0].tolist() == [[100, 50, 0], [255] * 3]


def test_palette_maps_to_palette_colours(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    img.putdata([0, 1, 2])
    for name in ("p.png", "p.gif", "p.bmp"):
        out = load_image(_save(tmp_path, img, name))
        assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]], name


@pytest.mark.parametrize("name", ["t.png", "t.gif"])
def test_palette_transparency_is_white(tmp_path, name):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * (254 * 3))
    img.putdata([0, 1])
    out = load_image(_save(tmp_path, img, name, transparency=0))
    assert out[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def test_gray_png_with_trns_transparency_is_white(tmp_path):
    img = Image.fromarray(np.array([[7, 200]], dtype=np.uint8), "L")
    out = load_image(_save(tmp_path, img, "t.png", transparency=7))
    assert out[0].tolist() == [[255, 255, 255], [200, 200, 200]]


def test_cmyk_jpeg_close_to_rgb(tmp_path, chelsea):
    path = _save(tmp_path, Image.fromarray(chelsea).convert("CMYK"), "cmyk.jpg", quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    out = load_image(path)
    assert out.shape == chelsea.shape
    assert np.abs(out.astype(int) - chelsea).mean() < 4


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB"])
def test_other_colour_spaces(chelsea, mode):
    out = np.asarray(
        to_rgb(Image.fromarray(chelsea).convert(mode) if mode != "LAB" else _lab(chelsea))
    )
    assert out.shape == chelsea.shape
    assert np.abs(out.astype(int) - chelsea).mean() < 3


def _lab(rgb: np.ndarray) -> Image.Image:
    from PIL import ImageCms

    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    return ImageCms.applyTransform(
        Image.fromarray(rgb), ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    )


def test_multi_frame_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    for name in ("anim.gif", "multi.tif"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:])
        assert load_image(path)[0, 0].tolist() == [255, 0, 0], name


def test_exif_orientation_is_applied(tmp_path, chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display is the stored image rotated 90 degrees clockwise
    path = _save(tmp_path, Image.fromarray(chelsea), "rot.jpg", quality=95, exif=exif)
    with Image.open(path) as img:
        stored = np.array(img.convert("RGB"))
    out = load_image(path)
    assert out.shape == (chelsea.shape[1], chelsea.shape[0], 3)
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))
    # and it is the upright cat, not some other rotation: compare against the original
    assert np.abs(out.astype(int) - np.rot90(chelsea, k=-1)).mean() < 3


def test_to_rgb_passes_rgb_through():
    img = Image.new("RGB", (2, 2))
    assert to_rgb(img) is img


# --- errors ---------------------------------------------------------------------------------


def _reason(path) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(info.value) == f"cannot read '{path}': {info.value.reason}"
    return info.value.reason


def test_image_error_format_and_pickle():
    err = ImageError("a.jpg", "no such file")
    assert str(err) == "cannot read 'a.jpg': no such file"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason) == ("a.jpg", "no such file")


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "nope.jpg") == "no such file"


def test_broken_symlink(tmp_path):
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    assert "broken symbolic link" in _reason(link)


def test_directory(tmp_path):
    assert "directory" in _reason(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    assert _reason(tmp_path / "e.jpg") == "empty file (0 bytes)"


@pytest.mark.parametrize(
    "content", [b"hello, this is text\n", os.urandom(4096), b"\xff\xd8\xff" + b"\x00" * 10]
)
def test_not_an_image(tmp_path, content):
    (tmp_path / "x.jpg").write_bytes(content)
    reason = _reason(tmp_path / "x.jpg")
    assert "not an image file (unrecognised format)" in reason or "corrupt" in reason


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    assert _reason(tmp_path / "notes.jpg") == "not an image file (unrecognised format)"


def test_a_video_given_as_an_image_points_to_the_video_command(tmp_path):
    """Before: "not an image file (unrecognised format)" and nothing more for a .mov."""
    (tmp_path / "kitchen.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  " + os.urandom(64))
    assert _reason(tmp_path / "kitchen.mov") == (
        "not an image file (unrecognised format); a video: `kerascope video FILE` explains it "
        "frame by frame"
    )


def test_heic_hint(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    assert "pillow-heif" in _reason(tmp_path / "IMG_0001.HEIC")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path, chelsea_jpeg):
    chelsea_jpeg.chmod(0)
    try:
        assert _reason(chelsea_jpeg) == "permission denied"
    finally:
        chelsea_jpeg.chmod(0o644)


def test_permission_denied_simulated(monkeypatch, chelsea_jpeg):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images.Image, "open", denied)  # root can read chmod 000 files
    assert _reason(chelsea_jpeg) == "permission denied"


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_file(tmp_path, chelsea, fmt):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, "JPEG" if fmt == "jpg" else "PNG")
    data = buf.getvalue()
    path = tmp_path / f"half.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt image data" in _reason(path)


def test_pixel_limit_from_env(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (100, 50)), "small.png")
    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "1000")
    reason = _reason(path)
    assert "100x50 = 5,000 pixels, over the 1,000 pixels limit" in reason
    assert "KERASCOPE_MAX_PIXELS" in reason
    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "5000")
    assert load_image(path).shape == (50, 100, 3)
    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="KERASCOPE_MAX_PIXELS"):
        load_image(path)


def test_raised_limit_overrides_pillows_own_check(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (100, 50)), "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse 5000 px
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "1000000")
    assert load_image(path).shape == (50, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    # A genuine 20000x20000 1-bit PNG: 50 MB of zero rows that deflate to ~50 KB.
    side, row = 20000, b"\x00" * (1 + 20000 // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    assert path.stat().st_size < 200_000

    def no_decode(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.delenv("KERASCOPE_MAX_PIXELS", raising=False)
    reason = _reason(path)
    assert reason == (
        "image is 20000x20000 = 400 MP, over the 179 MP limit "
        "(set KERASCOPE_MAX_PIXELS to raise it)"
    )
    assert MAX_PIXELS == 178_956_970 == images.max_pixels()


def test_zero_size_image(tmp_path, monkeypatch, chelsea_jpeg):
    # Pillow's decoders refuse zero dimensions in headers; guard our own check anyway.
    monkeypatch.setattr(images.Image, "open", lambda fp: Image.new("RGB", (0, 3)))
    assert _reason(chelsea_jpeg) == "image has zero size (0x3)"


def test_no_raw_exception_escapes_for_random_files(tmp_path, chelsea):
    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    rng = np.random.default_rng(0)
    for i in range(30):  # flip bytes all over a valid file: every outcome is an array or ImageError
        bad = bytearray(data)
        for pos in rng.integers(8, len(bad), size=5):
            bad[pos] ^= 0xFF
        path = tmp_path / f"fuzz{i}.png"
        path.write_bytes(bytes(bad))
        try:
            assert load_image(path).shape == chelsea.shape
        except ImageError:
            pass


# -- headers that lie about the data --------------------------------------------------------


def _inflated_jpeg(chelsea: np.ndarray, side: int) -> bytes:
    """A complete 16x16 JPEG (end marker included) whose frame header claims ``side``x``side``:
    libjpeg pads the missing blocks with grey and Pillow drops its warning."""
    buf = io.BytesIO()
    Image.fromarray(chelsea[:16, :16]).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


@pytest.mark.parametrize("min_size", [None, (224, 224)])  # full and reduced (draft) decode
def test_jpeg_header_claiming_more_than_its_data_is_refused_as_truncated(tmp_path, chelsea,
                                                                         min_size):  # fmt: skip
    data = _inflated_jpeg(chelsea, 12_000)
    path = tmp_path / "inflated.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        load_image(path, min_size=min_size)
    assert info.value.reason.startswith("truncated image data: the header says 12000x12000")
    assert f"the file has {len(data):,}" in info.value.reason
    with pytest.raises(ImageError, match="truncated image data"):  # an upload: a file object
        images.decode_image(io.BytesIO(data), "upload.jpg", min_size=min_size)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_large_flat_jpegs_are_not_mistaken_for_truncated(tmp_path, mode, progressive):
    """The smallest honest files there are: one flat colour, optimised Huffman tables."""
    path = tmp_path / "flat.jpg"
    Image.new(mode, (6000, 4000), 128 if mode == "L" else (200, 200, 200)).save(
        path, quality=10, progressive=progressive, optimize=True, subsampling=2
    )
    assert path.stat().st_size < 300_000
    image = load_image(path, min_size=(224, 224))
    assert image.shape[0] >= 448 and np.all(np.abs(image.astype(int) - image[0, 0]) <= 1)


def test_png_rows_too_wide_to_convert_say_so(tmp_path):
    """178,000,000 x 1 is under the pixel limit, but Pillow cannot copy such a row to RGB (its
    row size in bits overflows a C int: a bare MemoryError)."""
    width = 178_000_000
    deflate = zlib.compressobj(1)  # level 9 took 2.8 s over these 178 MB of zeros, level 1 0.8
    idat = deflate.compress(b"\x00" * (width + 1)) + deflate.flush()
    path = tmp_path / "wide.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == "too_large"
    assert info.value.reason == (
        "image rows are 178,000,000 pixels wide (178000000x1), more than the 89,478,478 "
        "Pillow can convert; crop or resize it first"
    )
    assert images.max_row_pixels("L") == 89_478_478 and images.max_row_pixels("RGBA") < 7e7
