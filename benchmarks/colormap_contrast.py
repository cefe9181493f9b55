"""How well does each colormap show up on real photos? The measurement behind DEFAULT_COLORMAP.

For each photo (scikit-image's cat, coffee, astronaut, rocket, and darkened copies standing in
for dark subjects) a smooth 7x7 heat blob centred on the subject is blended with
`kerascope.cam.overlay.overlay` at the default alpha. Contrast is the mean CIE76 colour
difference ΔE (CIE Lab) between overlay and original (~2 just noticeable, >10 obvious):
  - peak: where the heat is >= 0.9, i.e. where the model looked most; the number that picks
    the default (jet ends in dark red, which nearly vanishes on red/brown and dark photos);
  - top20: over the hottest 20 % of the picture (heat >= ~0.45, mostly mid-heat);
  - rises: on how many photos ΔE grows band by band with the heat (0.2-0.4, ..., 0.9-1), so
    the hottest place is also the most visible one;
  - cold: the largest ΔE where the heat is exactly 0 (must be 0: the photo is untouched).

    python benchmarks/colormap_contrast.py [--alpha 0.4] [--colormaps jet turbo inferno ...]
"""

from __future__ import annotations

import argparse
from itertools import pairwise

import numpy as np

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
DARKEN = 0.25  # dark subject: the photo at a quarter of its brightness (a night shot)


def heat_blob(size: int = 7, sigma: float = 1.3) -> np.ndarray:
    """A Grad-CAM-like map: one smooth peak at the centre, exactly 0 at the corners."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return np.clip((blob - blob.min()) / (blob.max() - blob.min()), 0, 1).astype(np.float32)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIE76 ΔE between two uint8 RGB images."""
    from skimage.color import rgb2lab

    return np.linalg.norm(rgb2lab(a) - rgb2lab(b), axis=-1)


BANDS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.01)


def contrast(image: np.ndarray, colormap: str, alpha: float) -> dict[str, float]:
    """Peak, top-20 % and cold ΔE of the overlay vs the photo, and whether ΔE rises with heat."""
    from kerascope.cam.overlay import overlay, upsample

    heat = heat_blob()
    big = upsample(heat, image.shape[:2])
    diff = delta_e(overlay(image, heat, alpha, colormap), image)
    bands = [diff[(big >= lo) & (big < hi)].mean() for lo, hi in pairwise(BANDS)]
    return {
        "peak": float(diff[big >= 0.9].mean()),
        "top20": float(diff[big >= np.quantile(big, 0.8)].mean()),
        "rises": float(np.all(np.diff(bands) >= 0)),
        "cold": float(diff[big == 0].max(initial=0.0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument(
        "--colormaps", nargs="+",
        default=["jet", "turbo", "hot", "inferno", "magma", "plasma", "viridis", "cividis"],
    )  # fmt: skip
    args = parser.parse_args()

    import skimage

    from kerascope.cam.overlay import DEFAULT_COLORMAP
    from kerascope.images import load_image

    data = skimage.data_dir
    photos = {p.split(".")[0]: load_image(f"{data}/{p}") for p in PHOTOS}
    for name in ("chelsea", "astronaut"):
        dark = (photos[name].astype(np.float32) * DARKEN).round().astype(np.uint8)
        photos[f"dark {name}"] = dark
    print(f"alpha {args.alpha}; peak ΔE (heat >= 0.9) per photo; default {DEFAULT_COLORMAP!r}")
    head = "".join(f"{p:>15s}" for p in photos)
    print(f"{'colormap':10s}{head}{'peak':>7s}{'top20':>7s}{'rises':>7s}{'cold':>6s}")
    for cmap in args.colormaps:
        rows = [contrast(image, cmap, args.alpha) for image in photos.values()]
        line = "".join(f"{r['peak']:15.1f}" for r in rows)
        mean = {k: np.mean([r[k] for r in rows]) for k in ("peak", "top20")}
        rises = f"{sum(r['rises'] for r in rows):.0f}/{len(rows)}"
        cold = max(r["cold"] for r in rows)
        print(f"{cmap:10s}{line}{mean['peak']:7.1f}{mean['top20']:7.1f}{rises:>7s}{cold:6.1f}")


if __name__ == "__main__":
    main()
