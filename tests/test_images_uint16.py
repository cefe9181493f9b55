"""uint16 arrays holding 8-bit values are read as 8-bit, with a warning; real 16-bit stays 16-bit.

Before, ``np.array(img, dtype=np.uint16)`` (values 0..255) was divided by 257 like 16-bit data:
a black picture, classified and explained without a word. An array with no value over 255 now
reads as the 8-bit picture it holds (as every other integer dtype within 0..255 does), and a
warning says so once per process, with the way to have a dark 16-bit picture read as 16-bit.
16-bit files are 16-bit whatever their values: their depth is in the file.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from PIL import Image

import kerascope
from kerascope.images import as_rgb_array, colour, load_image, to_rgb

LOGGER = "kerascope.images.colour"


@pytest.fixture
def fresh_warning(monkeypatch, caplog):
    """The once-per-process warning not yet given, and the records of this test."""
    monkeypatch.setattr(colour, "_said_8bit", threading.Event())
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return caplog


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_uint16_array_of_8bit_values_reads_as_the_8bit_picture(chelsea, fresh_warning):
    out = as_rgb_array(np.array(chelsea, dtype=np.uint16))
    np.testing.assert_array_equal(out, chelsea)  # before: all 0 and 1 (divided by 257)
    (message,) = _said(fresh_warning)
    assert f"no value over {chelsea.max()}: read as 8-bit" in message and "x / 65535" in message
    as_rgb_array(np.array(chelsea[:50], dtype=np.uint16))  # said once per process
    assert len(_said(fresh_warning)) == 1


def test_real_16bit_arrays_and_black_ones_are_read_as_before(chelsea, fresh_warning):
    full = np.array(chelsea, dtype=np.uint16) * 257
    np.testing.assert_array_equal(as_rgb_array(full), chelsea)
    assert as_rgb_array(np.array([[0, 256, 65535]], np.uint16))[0, :, 0].tolist() == [0, 1, 255]
    assert not as_rgb_array(np.zeros((4, 4), np.uint16)).any()
    assert _said(fresh_warning) == []  # nothing ambiguous: no warning


def test_16bit_files_stay_16bit_however_dark(tmp_path, fresh_warning):
    """A 16-bit PNG's depth is in the file: values up to 255 are a near-black picture."""
    dark = np.array([[0, 128, 255, 255]], dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    bright = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(bright).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "dark16.png")[0, :, 0].tolist() == [0, 0, 1, 1]
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 1, 128, 255]
    with Image.open(tmp_path / "dark16.png") as img:  # an opened file, passed as an Image
        assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 0, 1, 1]
    assert _said(fresh_warning) == []
    # built in memory from such an array, an Image reads as the array does
    made = Image.fromarray(dark)
    assert made.mode.startswith("I;16") and made.format is None
    assert np.asarray(to_rgb(made))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_classify_and_explain_see_the_picture_not_black(chelsea, tiny_clf, fresh_warning):
    """What a user passing ``np.array(img, dtype=np.uint16)`` gets: the uint8 picture's
    probabilities and map, not those of a black square."""
    wide = np.array(chelsea, dtype=np.uint16)
    got, want = (kerascope.classify(x, model=tiny_clf, top=3)[0] for x in (wide, chelsea))
    black = kerascope.classify(np.zeros_like(chelsea), model=tiny_clf, top=3)[0]
    assert got.ok and [p.index for p in got.predictions] == [p.index for p in want.predictions]
    np.testing.assert_allclose([p.probability for p in got.predictions],
                               [p.probability for p in want.predictions], atol=1e-6)  # fmt: skip
    assert not np.allclose([p.probability for p in got.predictions],
                           [p.probability for p in black.predictions], atol=1e-4)  # fmt: skip
    e16, e8 = (kerascope.explain(x, model=tiny_clf) for x in (wide, chelsea))
    assert e16.class_index == e8.class_index
    np.testing.assert_allclose(e16.heatmap, e8.heatmap, atol=1e-6)
