"""Class names that are not Latin (猫, 狗) draw as themselves, not as the same empty box, in the
pictures (Pillow labels) and the plots (matplotlib); with no font for them, one warning says so.

The rendering tests need a CJK font: `make test` installs Debian's fonts-wqy-zenhei."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kerascope import fonts

CAT, DOG = "猫", "狗"
NOTDEF = "\u0378"  # unassigned: every font draws its "missing glyph" box for it


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(fonts.ENV_VAR, raising=False)
    fonts._forget()
    yield
    fonts._forget()


@pytest.fixture
def cjk_font() -> fonts.FontFile:
    found = fonts.covering_font(CAT + DOG)
    fonts._forget()  # the warning, when there is none, is for another test to see
    if found is None:
        pytest.skip("no CJK font installed (`make test` installs fonts-wqy-zenhei)")
    return found


def _glyph(font, text: str) -> np.ndarray:
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).text((4, 4), text, fill=255, font=font)
    return np.asarray(image)


def test_the_bundled_font_draws_both_classes_as_the_same_box():
    """The bug, as Pillow draws it: why a label needs another font."""
    font = fonts._default(20)
    assert np.array_equal(_glyph(font, CAT), _glyph(font, DOG))
    assert np.array_equal(_glyph(font, CAT), _glyph(font, NOTDEF))


def test_a_label_in_chinese_is_drawn_with_glyphs_that_tell_the_classes_apart(cjk_font):
    font = fonts.pillow_font(20, f"{CAT} 97.0%")
    assert font.path == cjk_font.path and font.size == 20  # the same pixel size
    cat, dog, box = (_glyph(font, t) for t in (CAT, DOG, NOTDEF))
    assert cat.any() and dog.any()
    assert not np.array_equal(cat, dog)
    assert not np.array_equal(cat, box) and not np.array_equal(dog, box)


def test_explain_labels_differ_by_class(cjk_font):
    from kerascope.cam.overlay import _draw_bar, label_frame

    cat, dog = (_draw_bar(f"{name} 97.0%", 320, 32) for name in (CAT, DOG))
    assert not np.array_equal(cat, dog)  # before: both "□ 97.0%"
    picture = np.zeros((96, 128, 3), np.uint8)
    assert not np.array_equal(label_frame(picture, CAT), label_frame(picture, DOG))


def test_compare_titles_and_preview_labels_find_the_font(cjk_font):
    from kerascope.cam.compare import fit_text
    from kerascope.data.preview import _grid

    font, lines = fit_text(f"{CAT} 97.0%, ranked by ROAD", 400, 18)
    assert font.path == cjk_font.path and lines == [f"{CAT} 97.0%, ranked by ROAD"]
    tiles = [np.full((32, 32, 3), 200, np.uint8)] * 2
    cat = np.asarray(_grid(tiles, ["original", f"mixup: 30% of {CAT}"]))
    dog = np.asarray(_grid(tiles, ["original", f"mixup: 30% of {DOG}"]))
    assert cat.shape == dog.shape and not np.array_equal(cat, dog)


def test_ascii_text_keeps_the_bundled_font_without_a_search(monkeypatch):
    monkeypatch.setattr(fonts, "_needed", lambda text: pytest.fail("looked at the glyphs"))
    assert fonts.pillow_font(14, "tabby 97.0%") is fonts._default(14)


def test_latin1_text_the_bundled_font_has_stays_in_it():
    assert fonts.pillow_font(14, "rot +15°") is fonts._default(14)


def _tick_crops(fig, axis) -> list[np.ndarray]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    height = pixels.shape[0]
    crops = []  # the same window around each label's centre
    for label in axis.get_ticklabels():
        box = label.get_window_extent(canvas.get_renderer())
        x, y = round((box.x0 + box.x1) / 2), height - round((box.y0 + box.y1) / 2)
        crops.append(pixels[y - 10 : y + 10, x - 10 : x + 10])
    return crops


def test_confusion_matrix_axes_name_the_classes(cjk_font, tmp_path, caplog):
    from kerascope.report import new_figure, plot_confusion

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(np.array([[3, 1], [0, 4]]), [CAT, DOG], tmp_path / "confusion.png")
        fig, ax = new_figure(figsize=(3, 3))
        ax.set_xticks([0, 1], [CAT, DOG])
        ax.set_title(f"{CAT} 97.0%")
        cat, dog = _tick_crops(fig, ax.xaxis)
    assert not [str(w.message) for w in caught if "missing" in str(w.message)]
    assert cat.shape == dog.shape and (cat < 128).any()
    assert not np.array_equal(cat, dog)  # before: the same Last Resort / tofu box
    # Latin stays in matplotlib's own font: the found family is a fallback after it
    assert ax.title.get_fontfamily() == ["sans-serif", cjk_font.family]
    assert not [r for r in caplog.records if "Failed to find font weight" in r.getMessage()]


def test_curves_have_whole_epochs(tmp_path, monkeypatch):
    from kerascope import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    history = [{"epoch": e, "stage": 0, "loss": 1 / e, "accuracy": 0.2 * e} for e in (1, 2, 3)]
    report.plot_curves(history, tmp_path / "curves.png")
    for ax in figures[0].axes:
        ticks = ax.get_xticks()
        assert np.array_equal(ticks, np.round(ticks)), ticks  # before: 1.25, 1.5, ...


def test_no_font_for_the_text_warns_once_naming_the_characters(monkeypatch, caplog):
    monkeypatch.setattr(fonts, "_system_fonts", lambda rescan=False: [])
    with caplog.at_level(logging.WARNING, logger="kerascope.fonts"):
        assert fonts.pillow_font(12, f"{CAT} 97.0%") is fonts._default(12)
        fonts.pillow_font(12, f"{DOG} 3.0%")
        fonts.pillow_font(16, f"{CAT} 12.5%")
    notes = [r.getMessage() for r in caplog.records if r.name == "kerascope.fonts"]
    assert len(notes) == 1, notes
    assert f"'{CAT}' (U+732B)" in notes[0]
    assert "fonts-noto-cjk" in notes[0] and fonts.ENV_VAR in notes[0]


def test_the_font_named_in_the_environment_is_used(cjk_font, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fonts, "_system_fonts", lambda rescan=False: [])
    monkeypatch.setenv(fonts.ENV_VAR, cjk_font.path)
    assert fonts.pillow_font(12, CAT).path == cjk_font.path
    fonts._forget()
    bad = tmp_path / "font.ttf"
    bad.write_bytes(b"not a font")
    monkeypatch.setenv(fonts.ENV_VAR, str(bad))
    with caplog.at_level(logging.WARNING, logger="kerascope.fonts"):
        assert fonts.pillow_font(12, CAT) is fonts._default(12)
    notes = [r.getMessage() for r in caplog.records if r.name == "kerascope.fonts"]
    assert len(notes) == 2 and str(bad) in notes[0] and CAT in notes[1]


def test_a_font_chosen_for_a_label_also_has_its_latin_letters():
    """Pillow draws a label with one font: the review found 'x ⎲' given a symbols font without
    an 'x', so the Latin part of the label drew as boxes."""
    from kerascope import fonts

    found = fonts.covering_font("x ⎲")
    if found is None:
        pytest.skip("no installed font has '⎲'")
    assert {ord("x"), ord("⎲")} <= fonts._charmap(found.path, found.index)
