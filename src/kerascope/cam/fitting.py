"""What part of a picture an explanation is about: ``--fit whole`` or ``--fit crop``.

One rule for every command that explains (explain, ``--score``, ``--compare``,
`kerascope.faithfulness`, video, batch explain, serve), so the class, the probability, the map
and the faithfulness numbers all come from the one input the picture shows.

* ``whole`` (the default): the whole picture is resized to the model's input (aspect ratio not
  kept: a squash, with the weights' resampling filter), so the map covers everything the user
  sees and the label gives the class and probability of that input. Squash rather than
  letterbox: every input pixel is picture (a 2:1 letterbox spends half the input, and half the
  map's cells, on bars the model never saw in training), and the map stretches back onto the
  picture exactly. ``classify`` may say another class: it shows the model the centre crop.
* ``crop``: the model sees what ``classify`` shows it (the weights' convention: for zoo models
  the centre crop published accuracy is measured on), so class and probability are
  ``classify``'s. The map covers that crop only; outside it the photo stays untinted, the crop
  is outlined and a caption says what the model saw. For models whose convention is squash
  (models you train), ``crop`` is the same as ``whole``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PIL import Image, ImageDraw

from kerascope.errors import KerascopeError

FITS: tuple[str, ...] = ("whole", "crop")
"""The choices of ``--fit``."""
DEFAULT_FIT = "whole"
"""Users expect a heatmap of the picture they gave, ends and corners included (issue 20)."""
_OUTLINE = ((255, 255, 255), (0, 0, 0))  # a white line with a black one inside: seen anywhere


class FitError(KerascopeError, ValueError):
    """An unknown ``fit``: one line naming the choices."""


def check_fit(fit: str) -> str:
    """``fit`` checked: one of :data:`FITS`, else one clear error naming the choices."""
    if fit not in FITS:
        raise FitError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return fit


def fit_convention(clf: Any, fit: str = DEFAULT_FIT) -> Any:
    """The `InputConvention` that fits pictures to ``clf``'s input under ``fit``: the
    classifier's own for ``crop``, a squash with the same resampling filter for ``whole``."""
    convention = clf.convention
    if check_fit(fit) == "crop" or getattr(convention, "resize", "squash") == "squash":
        return convention
    return dataclasses.replace(convention, resize="squash", crop_fraction=1.0)


def model_input(clf: Any, source: Any, fit: str = DEFAULT_FIT):
    """One source decoded and fitted as every explain path fits it: a
    `kerascope.sources.Item` (``pixels`` at ``clf.input_size``, ``box``, ``shape``; ``error``
    set when unreadable). `kerascope.cam.explain`'s batches use the same convention."""
    from kerascope.sources import decode_item

    return decode_item(source, clf.input_size, convention=fit_convention(clf, fit))


Box = tuple[float, float, float, float]
"""(left, top, right, bottom) as fractions of the picture's width and height: the same for any
decode of the picture (a large JPEG decoded at reduced size, a scaled-down copy drawn)."""


def as_fractions(box: Box | None, shape: tuple[int, ...]) -> Box | None:
    """A box in a (height, width) picture's pixels (`kerascope.images.fit_box`) as a `Box`."""
    if box is None:
        return None
    height, width = (float(s) for s in shape[:2])
    left, top, right, bottom = box
    return (left / width, top / height, right / width, bottom / height)


def in_pixels(box: Box, shape: tuple[int, ...]) -> Box:
    """A `Box` in the pixels of a (height, width) picture."""
    height, width = (float(s) for s in shape[:2])
    left, top, right, bottom = box
    return (left * width, top * height, right * width, bottom * height)


def is_part(box: Box | None, shape: tuple[int, ...]) -> bool:
    """Whether ``box`` leaves out more than half a pixel of a (height, width) picture."""
    if box is None:
        return False
    height, width = (int(s) for s in shape[:2])
    left, top, right, bottom = in_pixels(box, shape)
    return left > 0.5 or top > 0.5 or right < width - 0.5 or bottom < height - 0.5


def caption(box: Box | None, shape: tuple[int, ...]) -> str:
    """The line saying what the model saw of a (height, width) picture when it saw a part of
    it; empty when it saw all of it."""
    if not is_part(box, shape):
        return ""
    left, top, right, bottom = box
    return f"the model saw only the outlined crop ({right - left:.0%} x {bottom - top:.0%})"


def with_caption(label: str, box: Box | None, shape: tuple[int, ...]) -> str:
    """``label`` followed by `caption` when the model saw only a part."""
    text = caption(box, shape)
    return f"{label} | {text}" if text else label


def place(cam: Any, box: Box | None, shape: tuple[int, ...]) -> Any:
    """A map as the model saw it, over the whole (height, width) picture: inside ``box``, and
    0 (the photo untinted) outside (`kerascope.cam.overlay.place_in_picture`)."""
    from kerascope.cam.overlay import place_in_picture

    height, width = (int(s) for s in shape[:2])
    whole = (0.0, 0.0, float(width), float(height))
    return place_in_picture(cam, shape, in_pixels(box, shape) if is_part(box, shape) else whole)


def pixel_box(box: Box, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A `Box` as whole pixels (left, top, right, bottom) of a (height, width) picture: the
    pixels whose centres lie in it, the ones an explanation of the crop may tint."""
    left, top, right, bottom = in_pixels(box, shape)
    return round(left), round(top), round(right), round(bottom)


def untinted_outside(heatmap: Any, box: Box | None) -> Any:
    """``heatmap`` over the whole picture, exactly 0 outside ``box`` (resampling a placed map
    spreads it a pixel or two past the crop's edge); as is when the box is all of it."""
    if not is_part(box, heatmap.shape):
        return heatmap
    left, top, right, bottom = pixel_box(box, heatmap.shape)
    out = heatmap * 0
    out[top:bottom, left:right] = heatmap[top:bottom, left:right]
    return out


def photo_outside(blended: Image.Image, photo: Image.Image, box: Box | None) -> Image.Image:
    """The overlay inside ``box`` and the plain ``photo`` outside it, pixel for pixel (the
    model did not see that part); ``blended`` as is when the box is all of the picture."""
    shape = (photo.size[1], photo.size[0])
    if not is_part(box, shape):
        return blended
    left, top, right, bottom = pixel_box(box, shape)
    out = photo.copy()
    out.paste(blended.crop((left, top, right, bottom)), (left, top))
    return out


def draw_outline(image: Image.Image, box: Box | None) -> Image.Image:
    """``image`` with ``box`` outlined, in place; as is when the box is the whole picture. The
    line is about 0.4 % of the longer side (2 px at least): seen on a 4k picture, thin on a
    grid panel; white with black inside, so it shows on any photo."""
    shape = (image.size[1], image.size[0])
    if not is_part(box, shape):
        return image
    left, top, right, bottom = pixel_box(box, shape)
    width = max(2, round(max(image.size) / 250))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(_OUTLINE):
        inset = i * width
        draw.rectangle(
            (left + inset, top + inset, right - 1 - inset, bottom - 1 - inset),
            outline=colour, width=width,
        )  # fmt: skip
    return image


def same_picture(drawn: tuple[int, ...], decoded: tuple[int, ...]) -> bool:
    """Whether a map drawn at (h, w) can be of a picture decoded at ``decoded``: the same size,
    or a whole-number scale of it within a pixel (a large picture is decoded reduced here: a
    JPEG by a power of two, other formats by Pillow's ``reduce``)."""
    (h, w), (ih, iw) = drawn, decoded
    near = [(abs(h / s - ih) <= 1 and abs(w / s - iw) <= 1)
            or (abs(ih / s - h) <= 1 and abs(iw / s - w) <= 1) for s in range(1, 17)]  # fmt: skip
    return any(near)
