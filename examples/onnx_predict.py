"""Classify photos with a file from `kerascope export`, using only onnxruntime, Pillow and NumPy.

    kerascope export efficientnet_lite0 -o lite0.onnx
    pip install onnxruntime pillow numpy          # on the machine that runs it: no kerascope
    python onnx_predict.py lite0.onnx cat.jpg dog.png --top 3

Everything the script needs is in the file: the input size and type, and the class names and
ids (``metadata_props``). Pixels go in as RGB 0..255; the model normalises them itself. The
picture is fitted as the file's ``fit`` entry says, as kerascope does it (Pillow's antialiased
resize, after a centre crop where the weights were evaluated that way), so the probabilities
are the ones `kerascope classify` prints.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load(path: str, height: int, width: int, fit: dict) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array: upright (EXIF), fitted as kerascope fits it."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        box = (0.0, 0.0, float(image.width), float(image.height))
        if fit.get("resize") == "crop":  # shorter side to size / fraction, keep the centre
            fraction = float(fit["crop_fraction"])
            scale = max(height / fraction / image.height, width / fraction / image.width)
            w, h = width / scale, height / scale
            left, top = (image.width - w) / 2.0, (image.height - h) / 2.0
            box = (max(0.0, left), max(0.0, top),
                   min(image.width, left + w), min(image.height, top + h))  # fmt: skip
        bicubic = fit.get("interpolation") == "bicubic"
        resample = Image.Resampling.BICUBIC if bicubic else Image.Resampling.BILINEAR
        image = image.resize((width, height), resample, box=box, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by `kerascope export`")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    height, width = json.loads(meta["input_size"])
    classes, ids = json.loads(meta["classes"]), json.loads(meta["class_ids"])
    fit = json.loads(meta.get("fit", "{}"))  # older files: squash, bilinear
    batch = np.stack([load(path, height, width, fit) for path in args.images])
    if meta["input_dtype"] == "float32":
        batch = batch.astype(np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": batch})
    for path, p in zip(args.images, probabilities, strict=True):
        for rank, i in enumerate(np.argsort(-p)[: args.top], start=1):
            print(f"{path}\t{rank}\t{i}\t{ids[i]}\t{classes[i]}\t{p[i]:.6f}")


if __name__ == "__main__":
    main()
