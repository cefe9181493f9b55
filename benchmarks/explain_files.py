"""`explain` of JPEG files with the pictures written, in images per second: the figure issue 18
sets a target for (>= 1,000 img/s on an H200), measured end to end through
`kerascope.cam.save.save_explanations` (decode, forward, gradient, maps, drawing, JPEG encode,
atomic write) into a fresh output folder each job, in a process set as the ``kerascope``
command sets its own (`kerascope.config.command_process_settings`).

The files are the scikit-image photos resized to 500x375 (the size of the GPU benchmark's
JPEGs) and cycled up to ``--files``. One warm-up job compiles; then the median of ``--repeats``
jobs (min - max) for each of ``--variants``, in the same process: the diagnostics say where the
time goes. ``--engine keras`` is the Keras/JAX path a GPU uses (on a CPU the default engine is
onnxruntime).

    KERAS_BACKEND=jax python benchmarks/explain_files.py --files 64 --batch-size 32 \
        --engine keras [--precision bfloat16] [--variants pictures,maps,api,no-fsync] \
        [--model host-only]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def make_files(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> list[str]:
    """``count`` JPEGs of real photos at ``size`` (width, height), cycling the photos."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    photos = [Image.open(data / n).convert("RGB").resize(size) for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        photos[i % len(photos)].save(path, quality=90)
        paths.append(str(path))
    return paths


def maps_only(inputs, clf, method, batch_size, precision) -> None:
    """Decode and compute the maps (on the device where it applies), drawing nothing."""
    from kerascope.cam.explain import _cached_explainer, iter_unplaced

    explainer = _cached_explainer(clf, method, None, precision=precision)
    for e, _, _ in iter_unplaced(clf, explainer, inputs, None, batch_size):
        assert e.ok, e.error


def host_only(name: str = "efficientnet_lite0"):
    """A classifier with ``name``'s input, labels and fitting whose device work is negligible
    (one strided convolution, average pool, dense): what a job then takes is the host's."""
    import keras

    from kerascope.zoo.fast_init import numpy_init  # no JAX compile per random initializer
    from kerascope.zoo.models import Classifier, load_model

    like = load_model(name)
    with numpy_init():
        inputs = keras.Input((*like.input_size, 3))
        x = keras.layers.Conv2D(16, 3, strides=8, activation="relu", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(like.num_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
    return Classifier(model, "host-only", like.input_size, like.labels, cam_layer="conv",
                      convention=like.convention)  # fmt: skip


VARIANTS = {
    "pictures": "the job as users run it",
    "api": "kerascope.explain: heatmaps at each photo's size, no pictures",
    "maps": "decode + maps on the device, no pictures: the ceiling pictures are held to",
    "no-fsync": "pictures with os.fsync a no-op (diagnostic: what syncing costs here)",
    "switch": "pictures with sys.setswitchinterval(0.0005) (diagnostic: GIL hand-over)",
    "processes": "pictures drawn in spawned processes (save_explanations pool='processes')",
    "workers8": "pictures with 8 picture threads",
    "workers32": "pictures with 32 picture threads",
}


def run_variant(variant, inputs, clf, args, extra, out: Path) -> float:
    """One job of ``variant``; its wall-clock seconds."""
    from kerascope.cam.save import save_explanations

    extra = dict(extra)
    if variant.startswith("workers"):
        extra["workers"] = int(variant.removeprefix("workers"))
    if variant == "processes":
        extra["pool"] = "processes"
    fsync, interval = os.fsync, sys.getswitchinterval()
    if variant == "no-fsync":
        os.fsync = lambda fd: None
    if variant == "switch":
        sys.setswitchinterval(0.0005)
    try:
        start = time.perf_counter()
        if variant == "maps":
            maps_only(inputs, clf, args.method, args.batch_size, args.precision)
            return time.perf_counter() - start
        if variant == "api":
            import kerascope

            found = kerascope.explain(inputs, model=clf, method=args.method,
                                      batch_size=args.batch_size,
                                      precision=args.precision)  # fmt: skip
            assert all(e.ok for e in found), [e.error for e in found if not e.ok][:3]
            return time.perf_counter() - start
        saved = save_explanations(inputs, out, clf, args.method, batch_size=args.batch_size,
                                  **extra)  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        os.fsync = fsync
        sys.setswitchinterval(interval)
    assert all(s.ok for s in saved), [s.error for s in saved if not s.ok][:3]
    assert len(list(out.rglob("*-output.jpg"))) == len(inputs)
    shutil.rmtree(out)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default=None, help="keras or onnx (default: kerascope's choice)")
    ap.add_argument("--precision", default=None, help="auto, float32, bfloat16 (if supported)")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="a zoo name, or host-only (`host_only`: the host's share of a job)",
    )
    ap.add_argument("--folder", default=None, help="existing JPEG folder instead of generated")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--workers", type=int, default=None, help="picture threads (if supported)")
    ap.add_argument(
        "--variants",
        default="pictures",
        help="comma-separated, each timed in the same process (one compile): "
        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
    )
    ap.add_argument("--make-files", default=None, help="only write --files JPEGs here, then exit")
    args = ap.parse_args()
    if args.make_files:
        make_files(Path(args.make_files), args.files)
        return
    if args.engine:
        os.environ["KERASCOPE_ENGINE"] = args.engine
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")

    from kerascope.cam.save import save_explanations
    from kerascope.zoo.models import load_model

    with contextlib.suppress(ImportError):  # as the command runs (older trees: as they were)
        from kerascope.config import command_process_settings

        command_process_settings()
    work = Path(tempfile.mkdtemp(prefix="kerascope-explain-files-"))
    try:
        if args.folder:
            inputs = sorted(str(p) for p in Path(args.folder).glob("*.jp*g"))[: args.files]
        else:
            inputs = make_files(work / "in", args.files)
        clf = host_only() if args.model == "host-only" else load_model(args.model)
        extra = {}
        accepted = inspect.signature(save_explanations).parameters
        if args.precision and "precision" in accepted:
            extra["precision"] = args.precision
        elif args.precision:
            print("this version of save_explanations has no precision option: float32")
        if args.workers and "workers" in accepted:
            extra["workers"] = args.workers
        ran = "float32"
        if "precision" in accepted:
            from kerascope.cam.save import precision_of

            ran = precision_of(clf, args.method, precision=args.precision)
        seconds = run_variant(variants[0], inputs, clf, args, extra, work / "warm")
        print(f"warm-up job (compiles): {len(inputs) / seconds:.1f} img/s")
        results = []
        for variant in variants:
            rates = []
            for rep in range(args.repeats):
                seconds = run_variant(variant, inputs, clf, args, extra, work / f"out{rep}")
                rates.append(len(inputs) / seconds)
            result = {
                "variant": variant,
                "files": len(inputs),
                "batch_size": args.batch_size,
                "engine": os.environ.get("KERASCOPE_ENGINE", "auto"),
                "precision": ran,
                "method": args.method,
                "model": args.model,
                "img_per_s_median": statistics.median(rates),
                "img_per_s_min": min(rates),
                "img_per_s_max": max(rates),
                "cpus": os.cpu_count(),
            }
            results.append(result)
            print(
                f"explain {args.method} [{variant}] in {ran}, {len(inputs)} files, batch "
                f"{args.batch_size}, engine {result['engine']}: "
                f"{result['img_per_s_median']:.1f} img/s [{min(rates):.1f} - {max(rates):.1f}]"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
