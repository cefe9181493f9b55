"""Does reduced precision on the CPU keep EfficientNet-Lite0's answers? (issue 22's default rule)

bfloat16 becomes a CPU default only if, against float32, top-1 agrees on >= 99 % of at least
200 real-photo crops and the mean |dp| is <= 0.005. This script measures both on 16 photos from
scikit-image, cropped and flipped at random (seeded: the same crops every run), 15 each:

- on a CPU with bf16 units (AMX / AVX512-BF16): OpenVINO bf16, the engine auto would use;
- elsewhere: Keras's mixed_bfloat16 clone (`--precision bfloat16` on the keras engine), an
  emulation of the number format only (bf16 activations and products, float32 weights and
  softmax), labelled as such, since OpenVINO would quietly compute in float32 there.

    python benchmarks/cpu_precision.py [--crops 15] [--batch 16] [--int8]

``--int8`` also builds the int8 graph exactly as ``--precision int8`` does (`kerascope.quantize`:
64 calibration crops, every rung of its ladder until one meets the bound) and prints the
agreement it measured on its own 200+ check crops, per rung, and which one it keeps.

|dp| is reported two ways: the mean over images of the largest change of any class's
probability (the stricter, used for the bound), and the mean over every (image, class).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "camera.png", "coins.png", "clock_motion.png", "grass.png",
          "gravel.png", "brick.png", "moon.png", "hubble_deep_field.jpg", "retina.jpg",
          "ihc.png")  # fmt: skip


def crops(size: int, per_photo: int, seed: int = 0) -> np.ndarray:
    """``per_photo`` random crops (30-100 % of the side, any aspect up to 4:3), half of them
    mirrored, of each photo, resized to ``size`` x ``size``: uint8 (N, size, size, 3)."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        with Image.open(folder / name) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        for _ in range(per_photo):
            side = rng.uniform(0.3, 1.0)
            aspect = rng.uniform(0.75, 1.333)
            cw = int(min(w, max(16, side * min(w, h) * aspect)))
            ch = int(min(h, max(16, side * min(w, h) / aspect)))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = rgb.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(np.asarray(crop))
    return np.stack(out)


def run(fwd, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    fwd(x[:batch])  # warm-up / compile
    start = time.perf_counter()
    probs = np.concatenate([np.asarray(fwd(x[i : i + batch])) for i in range(0, len(x), batch)])
    return probs, len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=15, help="crops per photo (16 photos)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--int8", action="store_true", help="also measure the int8 ladder")
    args = parser.parse_args()

    import kerascope
    from kerascope.engines import openvino_installed
    from kerascope.inference import compiled
    from kerascope.precision import cpu_info, cpu_native_bfloat16

    clf = kerascope.load_model("efficientnet_lite0")
    x = crops(clf.input_size[0], args.crops)
    reference, ref_rate = run(compiled(clf.model, "onnx"), x, args.batch)
    if cpu_native_bfloat16() and openvino_installed():
        label, fwd = "OpenVINO bf16", compiled(clf.model, "openvino", precision="bfloat16")
    else:
        label = "Keras mixed_bfloat16 (emulated: this CPU has no bf16 units)"
        fwd = compiled(clf.model, "keras", precision="bfloat16")
    probs, rate = run(fwd, x, args.batch)
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    diff = np.abs(probs - reference)
    worst = float(diff.max(1).mean())
    print(f"CPU: {cpu_info()[0]}; {len(x)} crops of {len(PHOTOS)} photos; reference: "
          f"onnxruntime fp32 ({ref_rate:.1f} img/s)")  # fmt: skip
    print(f"{label} ({rate:.1f} img/s): top-1 agreement {agree:.1%} "
          f"({int(round(agree * len(x)))}/{len(x)}), mean max-class |dp| {worst:.4f}, "
          f"mean |dp| {float(diff.mean()):.6f}, largest |dp| {float(diff.max()):.4f}")  # fmt: skip
    ok = agree >= 0.99 and worst <= 0.005
    print(f"bound (top-1 >= 99 %, mean |dp| <= 0.005): {'met' if ok else 'NOT met'}")
    if args.int8:
        int8(clf)


def int8(clf) -> None:
    """Every rung of `kerascope.quantize.LADDER` on ``clf``, measured as `int8_graph` does."""
    from kerascope import quantize
    from kerascope.onnx_export import cache

    size = clf.input_size
    fp32 = cache.onnx_bytes(clf.model)
    crops_ = quantize.photo_crops(size, quantize.CALIBRATION_IMAGES, 7)
    images = quantize.photo_crops(size, quantize.CHECK_IMAGES, 1)
    reference = quantize.probabilities(fp32, images)
    for keep in quantize.LADDER:
        start = time.perf_counter()
        graph = quantize.quantize_graph(fp32, crops_, keep)
        took = time.perf_counter() - start
        a = quantize.measure(reference, quantize.probabilities(graph, images), "")
        kept = ", ".join(("preprocessing", "first conv", "head", *keep))
        print(f"int8, float32 kept for {kept} (quantized in {took:.0f} s, {len(crops_)} "
              f"calibration crops): {a.text()} on {a.images} crops: "
              f"{'meets' if a.met else 'misses'} the bound")  # fmt: skip
    graph = quantize.int8_graph(clf.model)
    print(f"--precision int8 keeps: {graph.quantizer}; {graph.agreement.text()}")


if __name__ == "__main__":
    main()
