"""Text that fits a width: shrunk a little, else wrapped between words, never cut.

Used by the --compare grid's titles and numbers and by the label bars of explain pictures and
video frames (`kerascope.cam.overlay`): a long label ran past a 224 px picture's edge.
"""

from __future__ import annotations

import math

from PIL import ImageFont

from kerascope.fonts import pillow_font

SMALLEST = 10  # px: text shrinks no further; a word still too wide is broken


def fit_text(
    text: str, width: int, size: int, smallest: int = SMALLEST, shrink: float = 0.75
) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, list[str]]:
    """(font, lines) drawing all of ``text`` within ``width`` px: on one line at ``size``, or
    down to ``shrink`` times it, else wrapped between words (number pairs, split by two spaces,
    first) at ``size``, shrinking towards ``smallest`` only while a word alone is too wide; a
    word too wide even then is broken between letters. Nothing is cut: the lines, joined,
    are the text."""
    width = max(1, int(width))
    for s in range(size, max(smallest, math.ceil(size * shrink)) - 1, -1):
        font = _font(s, text)
        if _length(font, text) <= width:
            return font, [text]
    for s in range(size, smallest - 1, -1):
        font = _font(s, text)
        words = [w for chunk in text.split("  ") for w in chunk.split(" ")]
        if all(_length(font, w) <= width for w in words) or s == smallest:
            return font, _wrap(font, text, width, ("  ", " ", ""))
    raise AssertionError("unreachable")  # the loop returns at ``smallest``


def _wrap(font, text: str, width: int, seps: tuple[str, ...]) -> list[str]:
    """Greedy lines of ``text`` split at ``seps[0]``; a piece still too wide is split at the
    next separator ("" : between characters)."""
    if _length(font, text) <= width or not seps:
        return [text]
    sep, rest = seps[0], seps[1:]
    pieces = list(text) if sep == "" else text.split(sep)
    lines: list[str] = []
    joinable = False  # the last line ends a whole piece (not a broken one's first part)
    for piece in pieces:
        if joinable and _length(font, lines[-1] + sep + piece) <= width:
            lines[-1] += sep + piece
        elif _length(font, piece) <= width:
            lines.append(piece)
        else:
            lines.extend(_wrap(font, piece, width, rest))
            joinable = False
            continue
        joinable = True
    return lines


def _draw_lines(draw, at: tuple[int, int], fitted, fill, step: int | None = None) -> int:
    """Draw `fit_text`'s lines from ``at`` down; the y below the last."""
    font, lines = fitted
    x, y = at
    for line in lines:
        draw.text((x, y), line, fill=fill, font=font)
        y += step or _line_height(font)
    return y


def _length(font, text: str) -> float:
    """Drawn width of ``text``: advance and ink (a slanted last letter can pass its advance)."""
    if hasattr(font, "getlength"):
        return max(font.getlength(text), font.getbbox(text)[2] if text else 0)
    return font.getbbox(text)[2]


def _line_height(font) -> int:
    """Height of one line at ``font``: ascent + descent (23 px at 18 px), or the bitmap's."""
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent
    return font.getbbox("Ag")[3] + 2


def _font(size: int, text: str = "") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font with every glyph of ``text`` at ``size`` px (`kerascope.fonts`, cached there):
    Pillow's bundled one for ASCII, else an installed one (a class named 猫 drew as boxes)."""
    return pillow_font(size, text)


def fit_bar(
    text: str, width: int, height: int, pad: int, shorter: str | None = None
) -> tuple[ImageFont.ImageFont, list[str]]:
    """(font, lines) for a label bar ``width`` x ``height`` px with ``pad`` px of margin each
    side: one line at ~68 % of the height, else shrunk (to 8 px at least), else wrapped into
    as many lines as the bar holds at the largest size that fits; nothing is cut. Before, a
    label was drawn at one size and cut at the picture's edge: on a 224 px picture "Egyptian
    cat 72.4% (eigencam: ...)" lost its class and probability. ``shorter``: the same label
    worded shorter (`kerascope.cam.wording`), drawn instead where ``text`` would be smaller
    or wrapped and it is not: "where space is short"."""
    fitted = _fit_bar(text, width, height, pad)
    if shorter is None:
        return fitted
    short = _fit_bar(shorter, width, height, pad)
    return short if _legibility(short) > _legibility(fitted) else fitted


def _legibility(fitted) -> tuple[bool, float]:
    """One line first, then the larger font."""
    font, lines = fitted
    return len(lines) == 1, getattr(font, "size", 0)


def _fit_bar(text: str, width: int, height: int, pad: int):
    room = max(1, width - 2 * pad)
    size = max(8, round(height * 0.68))
    for s in range(size, max(1, min(8, size)) - 1, -1):
        font = _font(s, text)
        if _length(font, text) <= room:
            return font, [text]
    for s in range(size, 5, -1):  # wrapped: lines stacked within the bar's height
        font = _font(s, text)
        lines = _wrap(font, text, room, (" ", ""))
        if len(lines) * _line_height(font) <= height or s == 6:
            return font, lines
    raise AssertionError("unreachable")  # the loop returns at 6 px
