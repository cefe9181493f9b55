"""The decode explain keeps for a picture (`decode_item(keep_up_to=...)`, from
`load_image_whole`) is exactly what a second, full-size decode of the file gives, for every kind
of file and in-memory image; a reduced decode (a large file, fitted for a small input) is never
kept, and the model's input is the same whether or not the decode is kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.images import load_image, load_image_whole
from kerascope.sources import decode_item, kept_pixels, load_source

SIZE = (96, 96)  # reduced decodes start at a shorter side of 4 x 96 = 384: chelsea (300) is whole
ANY = 10**9


def _files(folder, chelsea: np.ndarray) -> dict[str, str]:
    """The real cat photo (300 x 451) in the formats and pixel modes explain meets."""
    photo = Image.fromarray(chelsea)
    grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the decode turns it upright
    alpha = photo.convert("RGBA")
    alpha.putalpha(Image.linear_gradient("L").resize(photo.size))
    saves = {
        "plain.jpg": (photo, {"quality": 90}),
        "progressive.jpg": (photo, {"quality": 90, "progressive": True}),
        "rotated.jpg": (photo, {"quality": 90, "exif": exif}),
        "cmyk.jpg": (photo.convert("CMYK"), {"quality": 90}),
        "grey16.png": (Image.fromarray(grey), {}),
        "palette.png": (photo.convert("P", palette=Image.Palette.ADAPTIVE), {"transparency": 0}),
        "alpha.png": (alpha, {}),
        "frames.gif": (photo.convert("P"), {"save_all": True,
                                            "append_images": [photo.rotate(90).convert("P")]}),
    }  # fmt: skip
    paths = {}
    for name, (image, options) in saves.items():
        path = folder / name
        image.save(path, **options)
        paths[name] = str(path)
    return paths


def test_a_kept_decode_is_the_full_size_decode_for_every_kind_of_file(tmp_path, chelsea):
    for name, path in _files(tmp_path, chelsea).items():
        kept = decode_item(path, SIZE, keep_up_to=ANY)
        assert kept.error is None and kept.original is not None, name
        np.testing.assert_array_equal(kept.original, load_image(path), err_msg=name)
        plain = decode_item(path, SIZE)  # not kept: the model's input is the same
        assert plain.original is None
        np.testing.assert_array_equal(kept.pixels, plain.pixels, err_msg=name)
        assert kept.shape == plain.shape and kept.box == plain.box, name
    rotated = decode_item(str(tmp_path / "rotated.jpg"), SIZE, keep_up_to=ANY)
    assert rotated.original.shape == (451, 300, 3)  # upright, as the picture is drawn


@pytest.mark.parametrize("name", ["plain.jpg", "rotated.jpg", "cmyk.jpg", "alpha.png"])
def test_a_reduced_decode_is_never_kept(tmp_path, chelsea, name):
    """For a 64 px input a 300 px tall photo decodes reduced (JPEG draft, or a box reduce):
    that decode is not the picture, so it is not kept whatever the budget."""
    path = _files(tmp_path, chelsea)[name]
    pixels, whole = load_image_whole(path, min_size=(64, 64))
    assert not whole and max(pixels.shape[:2]) < 451
    item = decode_item(path, (64, 64), keep_up_to=ANY)
    assert item.error is None and item.original is None
    np.testing.assert_array_equal(item.pixels, decode_item(path, (64, 64)).pixels)
    assert load_image_whole(path, max_side=200)[1] is False  # scaled to a side: not whole
    assert load_image_whole(path)[1] is True


@pytest.mark.parametrize("name", ["grey16.png", "frames.gif"])
def test_a_decode_left_whole_is_kept_even_where_a_reduction_was_due(tmp_path, chelsea, name):
    """Modes Pillow cannot resample (16-bit, palette) are decoded at full size even for a
    small input: that decode is the picture, so it is kept."""
    path = _files(tmp_path, chelsea)[name]
    item = decode_item(path, (64, 64), keep_up_to=ANY)
    assert item.error is None and item.original is not None
    np.testing.assert_array_equal(item.original, load_image(path))


def test_in_memory_images_are_kept_as_a_second_load_gives_them(chelsea):
    grey = np.asarray(Image.fromarray(chelsea).convert("L"))
    for source in (chelsea, grey, Image.fromarray(chelsea).convert("P"), chelsea / 255.0):
        item = decode_item(source, SIZE, keep_up_to=ANY)
        assert item.error is None
        np.testing.assert_array_equal(item.original, load_source(source))


def test_the_budget_is_per_picture_and_counts_every_picture_alive(tmp_path, chelsea):
    path = _files(tmp_path, chelsea)["plain.jpg"]
    pixels = 300 * 451
    assert decode_item(path, SIZE, keep_up_to=pixels).original is not None
    assert decode_item(path, SIZE, keep_up_to=pixels - 1).original is None
    # the batch in hand, the one on the device, PREFETCH + 1 behind them, and what the
    # consumer holds: 1 GiB in all
    assert kept_pixels(16) == (1 << 30) // (3 * 5 * 16)
    assert kept_pixels(16, in_flight=36) == (1 << 30) // (3 * (36 + 5 * 16))
