"""Heatmaps per second for EfficientNet-Lite0 on this machine, beside the plain forward pass.

Everything runs in one process on the same uint8 batches, so each cost is read as a ratio:
  - forward: the engine `kerascope.classify` uses (onnxruntime on CPU) and Keras itself (jit);
  - Grad-CAM / Grad-CAM++ / CAM through `Explainer.explain_batch` (analytic head: one forward
    to the head features plus a matrix product);
  - Grad-CAM by automatic differentiation on the active Keras backend (what any ``layer=``
    override or a non-GAP head costs), beside the Keras forward it differentiates;
  - video-like frames at 224 px: explain a batch of frames, upsample each map, blend it;
  - `kerascope.explain` on files (decoding and upsampling to full resolution included).

    python benchmarks/explain.py [--seconds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _timing import images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "jax")  # as kerascope would; Keras loads first here
    import keras
    import skimage

    from kerascope.cam.explain import Explainer, explain
    from kerascope.cam.overlay import overlay, upsample
    from kerascope.images import load_image, resize
    from kerascope.inference import compiled
    from kerascope.zoo.models import load_model

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(data, n) for n in ("chelsea.png", "coffee.png", "astronaut.png")]
    photos = [load_image(p) for p in paths]
    clf = load_model("efficientnet_lite0")
    frames = np.stack([resize(p, (224, 224)) for p in photos])
    b32 = np.concatenate([frames] * 11)[:32]
    b8 = b32[:8]
    timed = lambda fn, batch: images_per_second(fn, batch, args.seconds, args.repeats)  # noqa: E731

    print(
        f"EfficientNet-Lite0, Keras {keras.__version__} on {keras.backend.backend()}, "
        f"{os.cpu_count()} CPU cores; best of {args.repeats} x {args.seconds}s windows"
    )
    rows = []
    fwd = compiled(clf.model)
    base = timed(fwd, b32)
    rows.append((f"forward ({fwd.engine} engine), batch 32", base, base))
    for method in ("gradcam", "gradcam++", "cam"):
        ex = Explainer(clf, method)
        rate = timed(lambda b, ex=ex: ex.explain_batch(b), b32)
        rows.append((f"{method} (analytic head), batch 32", rate, base))

    def video(batch: np.ndarray) -> None:
        maps, _, _ = gradcam.explain_batch(batch)
        for frame, m in zip(batch, maps, strict=True):
            overlay(frame, upsample(m, frame.shape[:2]))

    gradcam = Explainer(clf, "gradcam")
    rows.append(
        ("video frames 224 px: gradcam + upsample + blend, batch 8", timed(video, b8), base)
    )
    files = paths * 4
    start = time.perf_counter()
    explain(files, model=clf, batch_size=16)
    rate = len(files) / (time.perf_counter() - start)
    rows.append(("kerascope.explain on files (decode, full-res maps)", rate, base))

    keras_fwd = compiled(clf.model, "keras")
    kbase = timed(keras_fwd, b8)
    rows.append(("forward (Keras, jit), batch 8", kbase, kbase))
    auto = Explainer(clf, "gradcam", analytic=False)
    rows.append(("gradcam (autodiff on Keras), batch 8", timed(auto.explain_batch, b8), kbase))

    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'img/s':>8}  {'forward/explain':>15}")
    for name, rate, ref in rows:
        print(f"{name:{width}}  {rate:8.1f}  {ref / rate:15.2f}x")


if __name__ == "__main__":
    main()
