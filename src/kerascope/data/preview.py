"""``kerascope augment``: the seed augmentation drawn on one of the user's photos, tile by tile.

The tutorial's ``datagen.flow(..., save_to_dir='preview')`` step. Draws come from
:func:`kerascope.data.augment.sample_matrices` (as training draws them) and are resampled by
the host executor, :func:`kerascope.data.affine.warp_pillow`; each tile is labelled with the
transform read back from its matrix. A module of its own so that ``augment`` (the definition)
and ``affine`` (its Pillow executor) import in one direction.

Each sample carries a JPEG comment (`_MARK`): a later run into the same folder removes the
samples of the same picture an earlier run left beyond its own ``n`` (``-n 8`` then ``-n 4``
would otherwise leave 4-7 beside the new ones, looking like one run), and only files that are
named as it names them *and* carry the mark, so no file of the user's is ever touched.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from kerascope.data.affine import colour_host, warp_pillow
from kerascope.data.augment import AugmentConfig, policy_plan, sample_matrices
from kerascope.data.policy import describe as describe_policy
from kerascope.data.regularise import RegulariseConfig, mix_host, sample_mix
from kerascope.files import atomic_open, make_output_folder
from kerascope.fonts import pillow_font
from kerascope.images import load_image, resize

_log = logging.getLogger(__name__)

_MARK = b"kerascope augment"  # the JPEG comment of every sample: what marks a file as ours


def augment_preview(
    image_path: str | os.PathLike,
    n: int = 20,
    out_dir: str | os.PathLike = "preview",
    config: AugmentConfig | None = None,
    seed: int = 0,
    max_side: int | None = 512,
    regularise: RegulariseConfig | None = None,
) -> list[Path]:
    """Write ``n`` augmented versions of one image as JPEGs, plus ``grid.jpg`` showing them all.

    Drawn by :func:`sample_matrices` (as training draws them) and resampled by Pillow.
    This is the tutorial's ``datagen.flow(..., save_to_dir='preview')`` step: look at what the
    augmentation does to your own pictures before training on it (too much rotation or zoom
    can destroy what identifies a class). Files are named ``<stem>_<i>.jpg``; samples of the
    same picture an earlier run wrote beyond these are removed (logged), other files in
    ``out_dir`` are left alone.

    Args:
        image_path: the picture to augment.
        n: number of augmented samples.
        out_dir: folder to write into (created if needed).
        config: the augmentation; the tutorial's settings by default.
        seed: makes the samples reproducible.
        max_side: shrink the picture so its longer side is at most this many pixels before
            augmenting (a 12 MP photo would be slow and no more informative); None keeps it.
        regularise: mixup / CutMix drawn as training draws them, each sample mixed with
            another of the samples (its number and share in the label).

    Returns:
        Paths of the ``n`` samples followed by the grid.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    image = load_image(image_path)
    height, width = image.shape[:2]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        image = resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    c = config or AugmentConfig()
    matrices = sample_matrices(c, seed, 0, 0, n, *image.shape[:2])
    samples = warp_pillow(np.repeat(image[None], n, axis=0), matrices, c.fill_mode)
    policy = policy_plan(c, seed, 0, 0, n, *image.shape[:2]) if c.policy else None
    if policy is not None:  # its colour operations, as training applies them
        samples = colour_host(samples, policy)
        matrices = sample_matrices(replace(c, policy=None), seed, 0, 0, n, *image.shape[:2])
    mix = None
    if regularise is not None and regularise.mixes and n > 1:
        mix = sample_mix(regularise, seed, 0, 0, n, *image.shape[:2])
        samples = mix_host(samples, mix)
    out = make_output_folder(Path(out_dir).expanduser())
    stem = Path(image_path).stem
    digits = len(str(n - 1))
    paths = []
    for i, sample in enumerate(samples):
        path = out / f"{stem}_{i:0{digits}d}.jpg"
        _save_jpeg(Image.fromarray(sample), path, 92, comment=_MARK)
        paths.append(path)
    _remove_stale(out, stem, {p.name for p in paths})
    grid = out / "grid.jpg"
    h, w = image.shape[:2]
    labels = ["original"] + [
        f"{i:0{digits}d}: {_describe(_transform_of(m, c, h, w))}" for i, m in enumerate(matrices)
    ]
    if policy is not None:  # a third line: the policy's operations on top of the above
        for i in range(n):
            labels[i + 1] += "\n" + describe_policy(policy.names[i], policy.values[i])
    if mix is not None:  # whom each sample was mixed with, and how much of it is its own
        for i in range(n):
            other = f"{int(mix.partner[i]):0{digits}d}"
            share = 1 - float(mix.own[i])
            labels[i + 1] += ("\n" + (f"mixup: {share:.0%} of {other}" if mix.kind == "mixup"
                                       else f"cutmix: {share:.0%} box of {other}"))  # fmt: skip
    _save_jpeg(_grid([image, *samples], labels), grid, 90)
    return [*paths, grid]


def _save_jpeg(image: Image.Image, path: Path, quality: int, comment: bytes = b"") -> None:
    """Through a temp file renamed when complete: never half a picture under ``path``."""
    with atomic_open(path, "wb") as fh:
        image.save(fh, "JPEG", quality=quality, **({"comment": comment} if comment else {}))


def _remove_stale(out: Path, stem: str, written: set[str]) -> list[Path]:
    """Remove the samples of ``stem`` an earlier run left in ``out`` beyond ``written``: named
    ``<stem>_<digits>.jpg`` (any padding: ``-n 20`` writes ``_07``) and carrying `_MARK`."""
    pattern = re.compile(re.escape(stem) + r"_\d+\.jpg")
    stale = []
    for path in sorted(out.iterdir()):
        if path.name in written or not pattern.fullmatch(path.name) or not _regular(path):
            continue
        try:
            with Image.open(path) as img:
                ours = img.format == "JPEG" and img.info.get("comment") == _MARK
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # unreadable or not a picture: not ours
        if ours:
            path.unlink(missing_ok=True)
            stale.append(path)
    if stale:
        names = ", ".join(p.name for p in stale[:3]) + (" ..." if len(stale) > 3 else "")
        _log.warning("'%s': removed %d sample(s) of '%s' an earlier augment run wrote (%s); "
                     "other files are left alone", out, len(stale), stem, names)  # fmt: skip
    return stale


def _regular(path: Path) -> bool:
    """A plain file, not followed through a link (a FIFO would block the read for ever)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _transform_of(matrix: np.ndarray, config: AugmentConfig, height: int, width: int) -> dict:
    """The flips, rotation, shift, shear and zoom one `sample_matrices` map was drawn with,
    read back from the 2x3 matrix (for the preview's labels): the inverse of its composition.

    A vertical flip with a rotation of r is the same map as a horizontal flip with r + 180;
    with ``vertical_flip`` on, the reading whose rotation is within the config's range wins.
    """
    m = np.asarray(matrix, np.float64).copy()
    linear, offset = m[:, :2], m[:, 2]
    angle = math.atan2(linear[1, 0], linear[1, 1])  # row 1 is zoom_y * (sin, cos)
    flip_y = False
    if config.vertical_flip and abs(math.degrees(angle)) > config.rotation + 1e-6:
        flip_y, angle = True, math.atan2(-linear[1, 0], -linear[1, 1])
    cos, sin = math.cos(angle), math.sin(angle)
    along = float(linear[0] @ [cos, -sin])  # zoom_x, negated by a horizontal flip
    flip_x = along < 0
    for axis, flipped, size in ((0, flip_x, width), (1, flip_y, height)):
        if flipped:
            linear[axis], offset[axis] = -linear[axis], size - 1 - offset[axis]
    zoom_x, zoom_y = float(linear[0] @ [cos, -sin]), float(np.hypot(*linear[1]))
    shear = float(linear[0] @ [sin, cos]) / zoom_x
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    shift = centre - linear @ centre - offset  # in pixels: input read from further along
    return {"flip_x": flip_x, "flip_y": flip_y, "rotation": math.degrees(angle),
            "shift": (float(shift[0]) / width, float(shift[1]) / height), "shear": shear,
            "zoom": (zoom_x, zoom_y)}  # fmt: skip


def _describe(t: dict) -> str:
    """One preview label: what `_transform_of` found, in the config's units."""
    flips = "+".join(n for n, on in (("flip", t["flip_x"]), ("vflip", t["flip_y"])) if on)
    # ``z``: a value that rounds to zero reads +0, never -0 (was "shear -0.00", "shift -0%")
    first = f"rot {t['rotation']:+z.0f}°" + (f" {flips}" if flips else "")
    second = (f"shift {t['shift'][0]:+z.0%} {t['shift'][1]:+z.0%} "
              f"zoom {t['zoom'][0]:.2f}/{t['zoom'][1]:.2f}")  # fmt: skip
    return f"{first} shear {t['shear']:+z.2f}\n{second}"


def _grid(images: list[np.ndarray], labels: list[str] | None = None, tile: int = 192,
          gap: int = 4) -> Image.Image:  # fmt: skip
    """Tiles on a white sheet, nearly square, each with its label underneath; the first tile
    is the original picture. Cells take the pictures' shape (all are the same size), so a
    landscape photo does not leave a square's worth of white around it."""
    from PIL import ImageDraw

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    height, width = images[0].shape[:2]
    scale = tile / max(height, width)
    cell_w, cell_h = max(1, round(width * scale)), max(1, round(height * scale))
    font = pillow_font(11, "".join(labels or []))  # a class named 猫 drew as boxes
    lines = max((label.count("\n") + 1 for label in labels or []), default=0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(13, measure.textbbox((0, 0), "A", font=font)[3] + 2)  # a CJK font's are taller
    text_h = lines * line_h + (3 if lines else 0)
    widest = max((measure.multiline_textbbox((0, 0), t, font=font)[2] for t in labels or []),
                 default=0)  # fmt: skip
    cell_w = max(cell_w, widest)  # a portrait picture's label stays under its own tile
    step_x, step_y = cell_w + gap, cell_h + text_h + gap
    sheet = Image.new("RGB", (cols * step_x + gap, rows * step_y + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for k, a in enumerate(images):
        thumb = Image.fromarray(a)
        thumb.thumbnail((cell_w, cell_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        x = gap + (k % cols) * step_x + (cell_w - thumb.width) // 2
        y = gap + (k // cols) * step_y + (cell_h - thumb.height) // 2
        sheet.paste(thumb, (x, y))
        if labels:
            top = gap + (k // cols) * step_y + cell_h + 2
            draw.multiline_text((gap + (k % cols) * step_x, top), labels[k], fill="black",
                                font=font, spacing=2)  # fmt: skip
    return sheet
