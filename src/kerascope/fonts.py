"""A font that has the glyphs of a text, for the labels on pictures and the texts of plots.

Why: class names are often not Latin (folders named 猫 and 狗 in the Chinese tutorials). Pillow's
bundled font (Aileron, ~110 Latin characters) and matplotlib's DejaVu Sans drew them as the same
empty boxes, so two classes could not be told apart, without a word said. Here a text is drawn
with Pillow's bundled font when it covers the text, else with an installed font whose character
map does (found through matplotlib's font list, the well-known CJK families first), and when
none does, one warning per process names the characters and what to install.

ASCII text never leaves the fast path (a cached font per size); every coverage answer is cached.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from PIL import ImageFont

_log = logging.getLogger(__name__)

ENV_VAR = "KERASCOPE_FONT"
"""A font file (.ttf, .otf, .ttc) to try first for text the bundled font lacks."""

PREFERRED_FAMILIES = (
    "DejaVu Sans",  # matplotlib's own font: Latin, Greek, Cyrillic look as in the plots
    "Noto Sans CJK SC",
    "Noto Sans CJK",
    "Source Han Sans SC",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing",
    "AR PL UKai",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Heiti SC",
    "Arial Unicode MS",
    "Noto Sans",
    "Noto Serif CJK",
)
"""Families tried first, in this order (a name starting with one counts); then all others."""

NOT_GLYPHS = ("last resort", "adobe blank")
"""Fonts whose map has every character but whose glyphs are placeholders (matplotlib >= 3.10
ships Unicode's Last Resort font: one sign per Unicode block, so 猫 and 狗 still look alike)."""

INSTALL_HINT = (
    "install a font that has them (Debian/Ubuntu: `sudo apt install fonts-noto-cjk` for "
    "Chinese, Japanese and Korean, `fonts-noto-core` for other scripts) or set "
    f"{ENV_VAR}=/path/to/font.ttf"
)

PillowFont = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class FontFile:
    """One face of an installed font: its file, face index (in a .ttc collection) and family."""

    path: str
    index: int
    family: str


_lock = threading.Lock()  # explain draws labels from several threads: one search at a time
_warned = False
_rescanned = False


def pillow_font(size: int, text: str = "") -> PillowFont:
    """The font to draw ``text`` with at ``size`` px: Pillow's bundled one when it has every
    glyph (all ASCII, at once), else the installed font that has them (warned once if none)."""
    if text.isascii():
        return _default(size)
    found = _pillow_choice(_visible(text))
    return _default(size) if found is None else _truetype(found.path, found.index, size)


def covering_font(text: str) -> FontFile | None:
    """The installed font drawing ``text`` when the bundled one cannot; None when that one can
    (or, after the warning, when no installed font has any of the missing glyphs)."""
    return None if text.isascii() else _pillow_choice(_visible(text))


def _visible(text: str) -> frozenset[int]:
    """Every code point of ``text`` that shows, ASCII included: Pillow draws a label with one
    font, so a font chosen for its 猫 must also have the label's Latin letters and digits."""
    return frozenset(ord(c) for c in text if c.isprintable() and not c.isspace())


def _needed(text: str) -> frozenset[int]:
    """Code points beyond ASCII that show (spaces and control characters draw nothing)."""
    return frozenset(ord(c) for c in text if ord(c) > 126 and c.isprintable() and not c.isspace())


@functools.lru_cache(maxsize=64)
def _default(size: int) -> PillowFont:
    """Pillow's bundled font at ``size`` px (a fixed bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


@functools.lru_cache(maxsize=64)
def _truetype(path: str, index: int, size: int) -> PillowFont:
    try:
        return ImageFont.truetype(path, size, index=index)
    except OSError:  # e.g. a colour-bitmap emoji font, drawn at fixed sizes only
        return _default(size)


@functools.cache
def _default_chars() -> frozenset[int]:
    """Code points the bundled font has (read from its own character map)."""
    font = _default(10)
    data = getattr(font, "font_bytes", None)
    if isinstance(font, ImageFont.FreeTypeFont) and data:
        from matplotlib import ft2font

        return frozenset(ft2font.FT2Font(BytesIO(data)).get_charmap())
    return frozenset(range(32, 127))  # the bitmap fallback: ASCII is what it surely has


@functools.lru_cache(maxsize=4096)
def _pillow_choice(chars: frozenset[int]) -> FontFile | None:
    if chars <= _default_chars():
        return None
    return _search(chars)


@functools.cache
def _charmap(path: str, index: int = 0) -> frozenset[int]:
    """The code points of one face (empty for a file FreeType cannot read)."""
    from matplotlib import ft2font

    try:
        face = ft2font.FT2Font(path, face_index=index) if index else ft2font.FT2Font(path)
        return frozenset(face.get_charmap())
    except (OSError, RuntimeError, TypeError, ValueError):
        return frozenset()


def _search(chars: frozenset[int]) -> FontFile | None:
    """The first candidate with every glyph; else (warning once) the one with the most, if any.
    Fonts installed after matplotlib cached its font list are looked for once, on a miss."""
    global _rescanned
    with _lock:
        best, most = None, 0
        for rescan in (False, True):
            if rescan and _rescanned:
                break
            _rescanned = _rescanned or rescan
            for font in _candidates(rescan):
                have = len(chars & _charmap(font.path, font.index))
                if have == len(chars):
                    return font
                if have > most:
                    best, most = font, have
        missing = chars - _charmap(best.path, best.index) if best else chars
        _warn_missing(missing)
        return best


def _candidates(rescan: bool = False) -> list[FontFile]:
    env = _env_font()
    return ([env] if env else []) + _system_fonts(rescan)


def _env_font() -> FontFile | None:
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    family = _family_name(path)
    if family is None:
        _warn_once("env", "%s=%s is not a font file FreeType can read", ENV_VAR, path)
        return None
    return FontFile(path, 0, family)


@functools.lru_cache(maxsize=8)
def _family_name(path: str) -> str | None:
    from matplotlib import ft2font

    try:
        return ft2font.FT2Font(path).family_name
    except (OSError, RuntimeError, TypeError, ValueError):
        return None


def _system_fonts(rescan: bool = False) -> list[FontFile]:
    """Installed faces in the order they are tried: `PREFERRED_FAMILIES`, then the others;
    upright regular faces first. ``rescan``: first add fonts installed since matplotlib's font
    list was cached (it is kept across processes and never sees a later ``apt install``)."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if rescan:
        listed = {entry.fname for entry in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in listed:
                try:
                    manager.addfont(path)
                except Exception:  # noqa: BLE001 - one unreadable file must not stop the search
                    _log.debug("font %s could not be read", path, exc_info=True)
    faces: dict[tuple[str, int], Any] = {}
    for entry in manager.ttflist:
        if entry.name.lower().startswith(NOT_GLYPHS):
            continue
        faces.setdefault((entry.fname, getattr(entry, "index", 0)), entry)

    def order(entry: Any) -> tuple:
        name = entry.name.lower()
        rank = next((i for i, f in enumerate(PREFERRED_FAMILIES) if name.startswith(f.lower())),
                    len(PREFERRED_FAMILIES))  # fmt: skip
        weight = entry.weight if isinstance(entry.weight, int) else 400
        return rank, entry.style != "normal", abs(weight - 400), len(name), name

    return [
        FontFile(e.fname, getattr(e, "index", 0), e.name) for e in sorted(faces.values(), key=order)
    ]


def _warn_missing(chars: frozenset[int]) -> None:
    global _warned
    if _warned or not chars:
        return
    _warned = True
    shown = sorted(chars)[:12]
    _log.warning(
        "no installed font has glyphs for %s%s: pictures and plots show them as boxes; %s",
        ", ".join(f"'{chr(c)}' (U+{c:04X})" for c in shown),
        f" and {len(chars) - len(shown)} more" if len(chars) > len(shown) else "",
        INSTALL_HINT,
    )


_once: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _once:
        _once.add(key)
        _log.warning(message, *args)


def _forget() -> None:
    """Forget every cached answer and warning (tests; a font installed meanwhile)."""
    global _warned, _rescanned
    _warned = _rescanned = False
    _once.clear()
    for cached in (_pillow_choice, _matplotlib_choice, _family_name):
        cached.cache_clear()


# Matplotlib ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _matplotlib_choice(chars: frozenset[int]) -> FontFile | None:
    found = _search(chars)
    if found is None:
        return None
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if not any(e.fname == found.path for e in manager.ttflist):  # KERASCOPE_FONT
        manager.addfont(found.path)
    _NearWeight.families.add(found.family)
    log = logging.getLogger(font_manager.__name__)
    if not any(isinstance(f, _NearWeight) for f in log.filters):
        log.addFilter(_NearWeight())
    return found


class _NearWeight(logging.Filter):
    """Drops matplotlib's warning that a fallback family has no face of exactly the text's
    weight (WenQuanYi Zen Hei has only 500, not 400): the nearest is what it should draw with,
    and the warning reached the terminal of every Chinese user on each run."""

    families: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            str(record.msg).startswith("findfont: Failed to find font weight")
            and len(args) > 1
            and args[1] in self.families
        )


def fit_figure(figure: Any) -> None:
    """Give every text of ``figure`` a fallback family for the glyphs its own font lacks.

    Matplotlib (>= 3.6) takes each glyph from the first family in a text's list that has it,
    so Latin stays in DejaVu Sans and only the missing glyphs come from the found font. Every
    text gets it, tick labels made later copy the first tick's font, so they have it too.
    """
    from matplotlib import font_manager
    from matplotlib.text import Text

    texts = figure.findobj(Text)
    missing: set[int] = set()
    for text in texts:
        content = text.get_text()
        if content.isascii():
            continue
        have: frozenset[int] = frozenset()
        prop = text.get_fontproperties()
        for family in prop.get_family():
            one = prop.copy()
            one.set_family([family])
            try:
                path = font_manager.findfont(one, fallback_to_default=False)
            except ValueError:
                continue
            have = have | _charmap(str(path), getattr(path, "face_index", 0))
        missing |= _needed(content) - have
    if not missing:
        return
    found = _matplotlib_choice(frozenset(missing))
    if found is None:
        return
    for text in texts:
        families = list(text.get_fontfamily())
        if found.family not in families:
            text.set_fontfamily([*families, found.family])


@functools.cache
def figure_class() -> type:
    """A ``matplotlib.figure.Figure`` that fits its fonts (`fit_figure`) before it lays out
    and draws: the texts are only all there then (titles, tick labels set after creation).
    Built on first use, so importing this module does not import matplotlib."""
    from matplotlib.figure import Figure

    class FittedFigure(Figure):
        """A Figure whose texts find a font for every glyph (kerascope.fonts.fit_figure)."""

        def tight_layout(self, *args: Any, **kwargs: Any) -> None:
            fit_figure(self)
            super().tight_layout(*args, **kwargs)

        def draw(self, renderer: Any) -> None:
            fit_figure(self)
            super().draw(renderer)

    return FittedFigure
