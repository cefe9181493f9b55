"""Classify photos with a file from `kerascope export`, using only onnxruntime, Pillow and NumPy.

    kerascope export efficientnet_lite0 -o lite0.onnx
    pip install onnxruntime pillow numpy          # on the machine that runs it: no kerascope
    python onnx_predict.py lite0.onnx cat.jpg dog.png --top 3

Everything the script needs is in the file: the input size and type, and the class names and
ids (``metadata_props``). Pixels go in as RGB 0..255; the model normalises them itself. Every
file is converted to 8-bit RGB by kerascope's rule (`to_rgb`, a copy of
``kerascope.images.to_rgb``: EXIF rotation, transparency over white, 16-bit and float pixels
rescaled rather than clipped) and fitted as the file's ``fit`` entry says (Pillow's antialiased
resize, after a centre crop where the weights were evaluated that way), so the probabilities
are the ones `kerascope classify` prints. One difference: kerascope decodes a photo more than
four times the input's size at a reduced size first (JPEG ``draft``), which can move the
probabilities of such photos in the third decimal; the pixels of smaller ones are identical.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import ExifTags, Image, ImageOps


def to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB by kerascope's rule (``kerascope.images.to_rgb``, kept identical).

    Pillow's own ``convert("RGB")`` clips 16-bit pixels at 255 (a 16-bit PNG turns white) and
    drops transparency (showing whatever colour transparent pixels hold).
    """
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.uint8)
    if mode in ("RGBa", "La"):  # premultiplied: over white is colour + (255 - alpha)
        a = np.asarray(image).astype(np.int32)
        return _three(np.clip(a[..., :-1] + (255 - a[..., -1:]), 0, 255))
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:]
        return _three((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255)
    if mode.startswith("I;16"):
        return _three(_from_16bit(np.asarray(image)))
    if mode == "I":  # 16-bit PGM/PNG, or 8-bit values
        a = np.asarray(image)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 65535 and (hi > 255 or image.format in ("PNG", "PPM")):
            return _three(_from_16bit(a))
        return _three(a if lo >= 0 and hi <= 255 else _from_float(a))
    if mode == "F":
        return _three(_from_float(np.asarray(image)))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _from_16bit(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) + 128) // 257  # 65535 -> 255 exactly


def _from_float(a: np.ndarray) -> np.ndarray:
    """[0, 1] and [0, 255] taken at face value, anything else stretched min..max."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255)


def _three(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2 or a.shape[-1] == 1:
        a = np.repeat(a.reshape(a.shape[:2] + (1,)), 3, axis=-1)
    return np.ascontiguousarray(a, dtype=np.uint8)


def load(path: str, height: int, width: int, fit: dict) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array: converted by `to_rgb`, fitted as kerascope fits it."""
    with Image.open(path) as opened:
        image = Image.fromarray(to_rgb(opened), "RGB")
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
