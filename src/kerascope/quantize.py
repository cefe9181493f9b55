"""int8 on the CPU: a statically quantized copy of the converted graph, used only where it was
measured to answer like float32.

Why a gate and not a switch: int8 is only worth running if it gives the float32 answers. So the
int8 graph is built once (onnxruntime's ``quantize_static``: QDQ, per-channel 8-bit weights,
uint8 activations calibrated on real-photo crops; the preprocessing, the first convolution and
the classifier head stay float32; more layers in float32 rung by rung, :data:`LADDER`), then
compared with the float32 graph on at least 200 *other* real-photo crops. ``--precision int8``
runs it only if top-1 agrees on >= 99 % of them and the mean over images of the largest
|delta probability| is <= 0.005 (issue 22's bound, the one bfloat16 must meet too); otherwise
it refuses in one line with the numbers.

Both the graph and its measurement are cached in the ONNX cache folder
(``onnx_export.cache``), keyed by the model's structure and weights, the quantizer settings,
the onnxruntime version and the photos used: a second process neither quantizes nor measures
again. The measurement travels inside the file (``metadata_props``), and so into
``kerascope export --precision int8``.

Measured on EfficientNet-Lite0 (real weights) on this project's AVX2 CPU (AMD EPYC, no VNNI),
``python benchmarks/cpu_precision.py --int8`` (68 calibration crops, 204 check crops): all
int8 77.9 % top-1 agreement, mean |dp| 0.066; depthwise and projection convolutions also in
float32 95.1 %, 0.015. Both miss the bound, so ``--precision int8`` refuses Lite0 here. On AVX2
the weights are uint8, not int8 (:func:`weight_type`): onnxruntime's u8s8 kernels saturate
there, which cost a further 20 points of agreement; the u8u8 kernels are exact but slow (all
int8: 0.2x float32's speed; the kept rung 0.7x at batch 32; benchmarks/classify_cpu.py).
NNCF 3.4 (OpenVINO's quantizer, ONNX backend, MIXED preset, fast bias correction) measured
better, 85.3 % all int8 and 97.1 % on the second rung, but within the bound neither: it is not
a dependency (ten more packages and a telemetry one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.precision import PrecisionError

MIN_AGREEMENT = 0.99  # top-1 agreement with float32
MAX_MEAN_DP = 0.005  # mean over images of the largest |delta probability|
CHECK_IMAGES = 200  # at least this many real-photo crops
CALIBRATION_IMAGES = 64
QUANTIZER = (
    "onnxruntime quantize_static: QDQ, per-channel {weights} weights, uint8 activations "
    "(MinMax), batch norms folded"
)
# CPUs whose int8 dot products do not saturate (VNNI, AMX): int8 weights (u8s8, the fast
# kernels) are exact there; elsewhere (AVX2) u8s8 saturates, so weights are uint8 (u8u8).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
QUANTIZER_VERSION = "2"
# Tried in turn until one meets the bound: more of the network in float32 at each step (the
# first conv and the head always are). Measured on Lite0 (204 crops): all int8 77.9 % top-1
# agreement, mean |dp| 0.066; depthwise and projections in float32 95.1 %, 0.015.
LADDER: tuple[tuple[str, ...], ...] = ((), ("depthwise", "projection"))
META_KEY = "kerascope_int8"
_ATTR = "_kerascope_int8"  # the in-process copy, on the model (freed with it)

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png", "motorcycle_right.png", "camera.png", "coins.png",
                  "clock_motion.png", "grass.png", "gravel.png", "brick.png", "moon.png",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png")  # fmt: skip


class Int8RefusedError(PrecisionError):
    """int8 was asked for where it cannot run, or where it did not measure close to float32."""


def photo_files() -> list[Path]:
    """The real photos installed packages ship: scikit-image's samples and matplotlib's
    ``grace_hopper.jpg`` (no download: the set must be the same on every machine)."""
    found: list[Path] = []
    with contextlib.suppress(ImportError):
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        found += [folder / n for n in SKIMAGE_PHOTOS if (folder / n).is_file()]
    with contextlib.suppress(ImportError):
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        found += [hopper] if hopper.is_file() else []
    return found


def photo_crops(
    size: tuple[int, int], count: int, seed: int, photos: list[Path] | None = None
) -> np.ndarray:
    """At least ``count`` random crops (30-100 % of the short side, aspect 3:4 to 4:3, half of
    them mirrored) spread evenly over ``photos``, resized as kerascope resizes: uint8
    (N, H, W, 3). Seeded: the same crops on every run and machine."""
    from kerascope.images import load_image, resize

    photos = photo_files() if photos is None else photos
    if not photos:
        raise Int8RefusedError(
            "int8 needs real photos to calibrate and check on and found none: install "
            "scikit-image (pip install scikit-image), or use --precision float32"
        )
    rng = np.random.default_rng(seed)
    per_photo = math.ceil(count / len(photos))
    out = []
    for path in photos:
        image = load_image(path)
        h, w = image.shape[:2]
        for _ in range(per_photo):
            side, aspect = rng.uniform(0.3, 1.0), rng.uniform(0.75, 4 / 3)
            cw = int(min(w, max(16, side * min(w, h) * aspect)))
            ch = int(min(h, max(16, side * min(w, h) / aspect)))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image[y0 : y0 + ch, x0 : x0 + cw]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            out.append(resize(np.ascontiguousarray(crop), size))
    return np.stack(out)


@dataclass(frozen=True)
class Agreement:
    """How the int8 graph answered beside float32 on the check crops."""

    top1: float  # fraction of images with the same top-1 class
    mean_dp: float  # mean over images of max over classes of |delta probability|
    max_dp: float  # the largest |delta probability| seen
    images: int
    description: str  # which crops

    @property
    def met(self) -> bool:
        enough = self.images >= CHECK_IMAGES
        return enough and self.top1 >= MIN_AGREEMENT and self.mean_dp <= MAX_MEAN_DP

    def text(self) -> str:
        same = int(round(self.top1 * self.images))
        return (f"top-1 agreement with float32 {self.top1:.1%} ({same}/{self.images}), mean "
                f"|Δp| {self.mean_dp:.4f}, largest {self.max_dp:.3f}")  # fmt: skip


@dataclass(frozen=True)
class Int8Graph:
    """A quantized graph, its measured agreement and how it was calibrated."""

    payload: bytes  # the serialized ONNX ModelProto (QDQ), metadata included
    agreement: Agreement
    calibration: str
    quantizer: str
    cached: bool  # read from the disk cache (neither quantized nor measured in this process)


def bound_text() -> str:
    return f"top-1 >= {MIN_AGREEMENT:.0%} and mean |Δp| <= {MAX_MEAN_DP}"


def weight_type(flags: frozenset[str] | None = None) -> str:
    """``"int8"`` on CPUs with VNNI/AMX int8 dot products, else ``"uint8"``. Why: without
    them onnxruntime's u8s8 kernels (VPMADDUBSW) saturate 16-bit sums; on Lite0 that cost 20
    points of top-1 agreement here, while uint8 weights matched the QDQ graph simulated in
    float (84 % vs 83 %, 64 crops). u8u8 is slower, which the benchmark shows."""
    from kerascope.precision import cpu_info

    flags = cpu_info()[1] if flags is None else flags
    return "int8" if any(f in flags for f in INT8_DOT_FLAGS) else "uint8"


def _quantizer() -> str:
    return QUANTIZER.format(weights=weight_type())


def _versions() -> dict[str, str]:
    return {"onnxruntime": metadata.version("onnxruntime")}


def _input_size(model: Any) -> tuple[int, int]:
    """(H, W) of a one-image classifier; refused in one line for anything else."""
    try:
        shape = tuple(model.inputs[0].shape)
        ports = len(model.inputs) + len(model.outputs)
    except (AttributeError, IndexError, TypeError, ValueError):
        shape, ports = (), 0
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3] or ports != 2:
        raise Int8RefusedError(
            f"int8 is calibrated for image classifiers (one (N, H, W, 3) input, one output); "
            f"'{getattr(model, 'name', 'model')}' is not one: use --precision float32"
        )
    return int(shape[1]), int(shape[2])


def probabilities(graph: bytes | Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """``graph``'s outputs (a serialized ONNX graph or an onnxruntime session) on uint8
    ``images``, run ``batch`` at a time on onnxruntime: float64 (N, classes)."""
    from kerascope.onnx_export.cache import cpu_session

    session = cpu_session(graph) if isinstance(graph, bytes) else graph
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: images[i : i + batch].astype(np.float32)})[0]
             for i in range(0, len(images), batch)]  # fmt: skip
    return np.concatenate(parts).astype(np.float64)


def measure(reference: np.ndarray, got: np.ndarray, description: str) -> Agreement:
    """:class:`Agreement` of probabilities ``got`` with ``reference`` (both (N, classes))."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(reference, np.float64))
    same = np.asarray(got).argmax(1) == np.asarray(reference).argmax(1)
    return Agreement(float(same.mean()), float(diff.max(1).mean()), float(diff.max()),
                     len(reference), description)  # fmt: skip


def float_nodes(proto: Any, keep: tuple[str, ...] = ()) -> list[str]:
    """The nodes left in float32: everything up to and including the first convolution (the
    preprocessing and the layer that sees raw pixels), the head from the last Gemm/MatMul on
    (logits and softmax, where int8 steps would show directly in the probabilities), and the
    kinds of convolution named in ``keep``: ``"depthwise"`` (grouped), ``"projection"`` (a
    1x1 convolution not followed by an activation: the linear bottlenecks)."""
    nodes = list(proto.graph.node)
    first = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), -1)
    heads = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")]
    last = heads[-1] if heads else len(nodes)
    names = [n.name for n in nodes[: first + 1]] + [n.name for n in nodes[last:]]
    consumers: dict[str, set[str]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, set()).add(n.op_type)
    for n in nodes[first + 1 : last]:
        if n.op_type != "Conv":
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        activated = consumers.get(n.output[0], set()) & {"Clip", "Relu"}
        if ("depthwise" in keep and group > 1) or (
            "projection" in keep and group == 1 and not activated
        ):
            names.append(n.name)
    return names


def quantize_graph(fp32: bytes, calibration: np.ndarray, keep: tuple[str, ...] = ()) -> bytes:
    """``fp32`` (a converted graph, float32 NHWC input) quantized with onnxruntime.

    Batch-norms are folded into the convolutions first (``quant_pre_process``), so the folded
    weights are what is quantized, per output channel; activations get MinMax ranges over
    ``calibration`` (uint8 RGB crops).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load_from_string(fp32).graph.input[0].name
    batches = [calibration[i : i + 8].astype(np.float32) for i in range(0, len(calibration), 8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.rest, None)
            return None if x is None else {name: x}

    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="kerascope-int8-") as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        quiet.setLevel(logging.ERROR)  # the quantizer logs a line per tensor it skips
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(
                pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8 if weight_type() == "int8" else QuantType.QUInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=float_nodes(onnx.load(pre), keep),
            )  # fmt: skip
        finally:
            quiet.setLevel(level)
        return Path(out).read_bytes()


def _key(model_key: str, calibration: str, check: str) -> str:
    header = [model_key, _quantizer(), QUANTIZER_VERSION, LADDER, _versions(), calibration, check]
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def _from_payload(payload: bytes, cached: bool) -> Int8Graph | None:
    """The graph and its record, or None when the record is missing or unreadable."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load_from_string(payload).metadata_props}
        record = json.loads(props[META_KEY])
        agreement = Agreement(**record["agreement"])
        return Int8Graph(payload, agreement, record["calibration"], record["quantizer"], cached)
    except Exception:  # noqa: BLE001  (no record, or a damaged protobuf: quantize again)
        return None


def int8_graph(model: Any, photos: list[Path] | None = None) -> Int8Graph:
    """``model``'s int8 graph and its measured agreement with float32: from this process, else
    from the disk cache, else quantized (calibration crops) and measured (other crops) now.

    Args:
        model: a Keras image classifier the ONNX converter supports.
        photos: the real photos to crop (default :func:`photo_files`); part of the cache key.
    """
    from kerascope.onnx_export import cache

    size = _input_size(model)
    photos = photo_files() if photos is None else photos
    n_cal, n_check = CALIBRATION_IMAGES, CHECK_IMAGES  # read now: tests shrink them
    names = ", ".join(p.name for p in photos)
    calibration = (f"{n_cal}+ random crops (seed 7) of {len(photos)} real photos "
                   f"({names}), resized to {size[0]}x{size[1]}")  # fmt: skip
    check = f"{n_check}+ other random crops (seed 1) of the same photos"
    model_key = cache.model_key(model)
    key = _key(model_key, calibration, check) if model_key else None
    memo = vars(model).setdefault(_ATTR, {}) if hasattr(model, "__dict__") else {}
    if key is not None and key in memo:
        return memo[key]
    path = cache.folder() / f"{key}.int8.onnx" if key else None
    payload = cache.read_payload(path) if path is not None else None  # the ONNX cache's format
    graph = _from_payload(payload, cached=True) if payload is not None else None
    if graph is None:
        graph = _quantize_and_measure(model, size, photos, calibration, check)
        if path is not None:
            cache.write_payload(path, graph.payload)
    if key is not None:
        memo[key] = graph
    return graph


def _quantize_and_measure(model, size, photos, calibration: str, check: str) -> Int8Graph:
    """Climb :data:`LADDER` until a graph meets the bound; the best one measured otherwise."""
    from kerascope.onnx_export import cache

    fp32 = cache.onnx_bytes(model)
    crops = photo_crops(size, CALIBRATION_IMAGES, 7, photos)
    images = photo_crops(size, CHECK_IMAGES, 1, photos)
    reference = probabilities(fp32, images)
    if reference.ndim != 2 or not np.allclose(reference.sum(1), 1.0, atol=1e-3):
        raise Int8RefusedError(
            f"int8 is checked on class probabilities and '{getattr(model, 'name', 'model')}' "
            "does not output them (a feature extractor, or logits): use --precision float32"
        )
    best: Int8Graph | None = None
    for keep in LADDER:
        quantized = quantize_graph(fp32, crops, keep)
        agreement = measure(reference, probabilities(quantized, images), check)
        kept = ", ".join(("preprocessing", "first conv", "head", *keep))
        quantizer = f"{_quantizer()}; float32 kept for: {kept}"
        payload = _with_record(quantized, agreement, calibration, quantizer)
        graph = Int8Graph(payload, agreement, calibration, quantizer, cached=False)
        if best is None or (agreement.top1, -agreement.mean_dp) > (
            best.agreement.top1,
            -best.agreement.mean_dp,
        ):
            best = graph
        if agreement.met:
            return graph
    assert best is not None
    return best


def _with_record(payload: bytes, agreement: Agreement, calibration: str, quantizer: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(payload)
    record = {"agreement": asdict(agreement), "calibration": calibration, "quantizer": quantizer,
              "bound": bound_text(), "met": agreement.met}  # fmt: skip
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, META_KEY: json.dumps(record)})
    return proto.SerializeToString()


def refusal(model: Any, graph: Int8Graph) -> str:
    """The one line ``--precision int8`` prints when the graph missed the bound."""
    name = getattr(model, "name", "model")
    return (f"int8 refused for '{name}': its calibrated int8 graph misses the bound "
            f"({bound_text()}) on {graph.agreement.images} real-photo crops: "
            f"{graph.agreement.text()}; use --precision float32 (or auto)")  # fmt: skip


def int8_engine(model: Any, wanted: str, cpu: bool) -> str:
    """The engine that runs ``model`` in int8 (``onnx`` for auto), after checking that int8
    can run here and measured close to float32; else :class:`Int8RefusedError` in one line."""
    if not cpu:
        raise Int8RefusedError(
            "int8 is a CPU precision in kerascope (a calibrated onnxruntime graph); on this "
            "accelerator use --precision bfloat16 or auto"
        )
    if wanted == "keras":
        raise Int8RefusedError(
            "the keras engine has no int8; int8 runs the converted graph on the onnx or "
            "openvino engine (unset KERASCOPE_ENGINE), or use --precision float32"
        )
    from kerascope.onnx_export import supports

    if not supports(model):
        raise Int8RefusedError(
            f"int8 needs the ONNX converter, which does not support "
            f"'{getattr(model, 'name', 'model')}'; use --precision float32"
        )
    if wanted == "openvino":
        from kerascope.engines import _require_openvino

        _require_openvino()  # one line naming the install command
    graph = int8_graph(model)
    if not graph.agreement.met:
        raise Int8RefusedError(refusal(model, graph))
    return "onnx" if wanted == "auto" else wanted


def int8_runner(model: Any, engine: str = "onnx") -> Callable[[list], list]:
    """``run(xs) -> outputs`` on ``model``'s int8 graph (onnxruntime, or OpenVINO for
    ``engine="openvino"``), only where :func:`int8_engine` accepts it."""
    engine = int8_engine(model, engine, cpu=True)
    graph = int8_graph(model)
    if engine == "openvino":
        from kerascope.engines import import_openvino

        core = import_openvino().Core()
        net = core.compile_model(core.read_model(graph.payload), "CPU",
                                 {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
        local = threading.local()  # one infer request per thread (a request is not thread-safe)

        def run(xs: list) -> list:
            request = getattr(local, "request", None)
            if request is None:
                request = local.request = net.create_infer_request()
            result = request.infer({0: np.asarray(xs[0], np.float32)})
            return [np.array(result[net.outputs[0]], np.float32)]

        return run
    from kerascope.onnx_export.cache import cpu_session

    session = cpu_session(graph.payload)
    name = session.get_inputs()[0].name
    return lambda xs: session.run(None, {name: np.asarray(xs[0], np.float32)})
