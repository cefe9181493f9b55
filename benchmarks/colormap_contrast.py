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

Then the contrast rule (`kerascope.cam.overlay.opacity_gain`) on real maps of the offline
Lite0 on chelsea: ΔE over the hottest 5 % of the picture (mean and 10th percentile), without the
rule (opacity alpha * heat) and with it, for LayerCAM at an early layer (a faint map: 99 % of it
below ~0.3) and for the default Grad-CAM (drawn as before: gain 1).

    python benchmarks/colormap_contrast.py [--alpha 0.4] [--colormaps jet turbo inferno ...]
                                           [--no-maps]
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


def contrast_rule(alpha: float) -> None:
    """The hottest 5 % of real maps, without and with the contrast rule (see the docstring)."""
    import skimage

    import kerascope
    from kerascope.cam import overlay as ov
    from kerascope.images import load_image

    path = f"{skimage.data_dir}/chelsea.png"
    photo = load_image(path)
    print(f"\ncontrast rule, chelsea, Lite0, alpha {alpha}: ΔE over the hottest 5 % (mean / p10)")
    print(f"{'map':36s}{'gain':>6s}{'without':>16s}{'with':>16s}")
    runs = [(m, layer, fit) for fit in ("whole", "crop")
            for m, layer in (("layercam", "blocks_0_bn2"), ("gradcam", None))]  # fmt: skip
    for method, layer, fit in runs:
        heat = kerascope.explain(path, method=method, layer=layer, fit=fit).heatmap
        big = ov.upsample(heat, photo.shape[:2])
        hot = big >= np.quantile(big, 0.95)
        heat8 = (np.clip(heat, 0, 1) * 255 + 0.5).astype(np.uint8)
        level, row = ov.CONTRAST_LEVEL, []
        for rule in (0.0, level):  # CONTRAST_LEVEL 0: gain 1, the blend before the rule
            ov.CONTRAST_LEVEL = rule
            diff = delta_e(ov.overlay(photo, heat, alpha), photo)[hot]
            row.append(f"{diff.mean():9.1f} / {np.quantile(diff, 0.1):4.1f}")
        ov.CONTRAST_LEVEL = level
        name = f"{method} @ {layer or 'default layer'}, {fit}"
        print(f"{name:36s}{ov.opacity_gain(heat8):6.2f}{row[0]:>16s}{row[1]:>16s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument(
        "--colormaps", nargs="+",
        default=["jet", "turbo", "hot", "inferno", "magma", "plasma", "viridis", "cividis"],
    )  # fmt: skip
    parser.add_argument("--no-maps", action="store_true", help="skip the real-map section")
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
    if not args.no_maps:
        contrast_rule(args.alpha)


if __name__ == "__main__":
    main()
