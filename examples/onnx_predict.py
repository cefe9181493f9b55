"""Classify photos with a file from `kerascope export`, using only onnxruntime, Pillow and NumPy.

    kerascope export efficientnet_lite0 -o lite0.onnx
    pip install onnxruntime pillow numpy          # on the machine that runs it: no kerascope
    python onnx_predict.py lite0.onnx cat.jpg dog.png --top 3

Everything the script needs is in the file: the input size and type, and the class names and
ids (``metadata_props``). Pixels go in as RGB 0..255; the model normalises them itself. The
resize is the one kerascope uses (Pillow's antialiased bilinear), so the probabilities are the
ones `kerascope classify` prints.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load(path: str, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array: upright (EXIF), resized as kerascope resizes."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
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
    batch = np.stack([load(path, height, width) for path in args.images])
    if meta["input_dtype"] == "float32":
        batch = batch.astype(np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": batch})
    for path, p in zip(args.images, probabilities, strict=True):
        for rank, i in enumerate(np.argsort(-p)[: args.top], start=1):
            print(f"{path}\t{rank}\t{i}\t{ids[i]}\t{classes[i]}\t{p[i]:.6f}")


if __name__ == "__main__":
    main()
