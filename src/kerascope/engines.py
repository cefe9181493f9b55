"""CPU engines for the converted ONNX graph: onnxruntime and OpenVINO, and which one auto picks.

Why two: the graph kerascope converts (``kerascope.onnx_export``) runs on onnxruntime in
float32; OpenVINO (``pip install openvino``, optional) runs the same graph and is the one of the
two with bfloat16 kernels for CPUs that have bf16 units (AMX, AVX512-BF16). Issue 22 measured,
on such a CPU (2 threads, EfficientNet-Lite0, batch 32): OpenVINO bf16 1.3-2.5x onnxruntime's
fp32 at 30/32 top-1 agreement, OpenVINO f32 no faster than onnxruntime. On this project's AMD
EPYC (AVX2 only, no bf16 units, a shared machine) OpenVINO f32 was 1.04-1.12x onnxruntime at
batch 32 and 0.97-1.19x at batch 1 over three interleaved runs, level end to end
(benchmarks/classify_cpu.py; README "CPU engines").

The rule ``auto`` follows on a CPU (:func:`cpu_engine`):

- float32: onnxruntime, unless a measurement for this CPU model (:func:`measure`, kept in
  ``<cache>/cpu_engines.json`` per CPU model name and engine versions) found OpenVINO at least
  ``MARGIN`` times faster. A rule first, so no command pays a measurement it did not ask for and
  auto is never slower than onnxruntime on a CPU nobody measured.
- bfloat16: OpenVINO with its bf16 precision hint on CPUs with native bf16 units (and the keras
  engine's mixed clone elsewhere, as before). OpenVINO asked for bf16 on a CPU without the units
  is refused in one line: it would quietly compute in float32 while saying bf16.

OpenVINO, like onnxruntime, bakes the weights in: a forward is a snapshot (``Forward.snapshot``).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.errors import ConfigError
from kerascope.precision import PrecisionError, cpu_info, cpu_native_bfloat16

ENGINES = ("auto", "keras", "onnx", "openvino")
GRAPH_ENGINES = ("onnx", "openvino")  # run the converted graph; weights are a snapshot
ENGINES_FILE = "cpu_engines.json"
MARGIN = 1.10  # measured speed-up OpenVINO needs before auto picks it for float32
_HINTS = {"float32": "f32", "bfloat16": "bf16"}


class OpenVINOMissingError(ConfigError):
    """The openvino engine was asked for and the package is not installed."""


def import_openvino() -> Any:
    """``openvino``, imported without its usage telemetry.

    Why: ``import openvino`` imports its converter, which, when ``openvino_telemetry`` is
    installed and no consent file exists, forks a process that sends an event to a web service
    (opt-out, not opt-in). A fork in a process that JAX has made multithreaded can deadlock, and
    kerascope sends nothing anywhere; OpenVINO's converter falls back to its own stub when the
    telemetry module cannot be imported, which is what the ``None`` entry makes it do.
    """
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  (import -> ImportError)
    import openvino

    return openvino


def openvino_installed() -> bool:
    """Whether ``import openvino`` works (the package is optional)."""
    try:
        import_openvino()
    except ImportError:
        return False
    return True


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("onnxruntime", "openvino"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = ""
    return out


def _require_openvino() -> None:
    if not openvino_installed():
        from kerascope.extras import install_command

        raise OpenVINOMissingError(
            f"the openvino engine needs the openvino package: {install_command('openvino')} "
            "(or unset KERASCOPE_ENGINE to run on onnxruntime)"
        )


def check_graph_precision(engine: str, precision: str) -> None:
    """Refuse, in one line, a precision the graph ``engine`` cannot compute on this CPU."""
    if engine == "onnx" and precision != "float32":
        raise PrecisionError(
            f"the onnx engine computes in float32 only; for {precision} use the keras "
            "engine (KERASCOPE_ENGINE=keras or unset), or --precision float32"
        )
    if engine == "openvino":
        if precision not in _HINTS:
            raise PrecisionError(
                f"the openvino engine computes in float32 or bfloat16, not {precision}; use "
                "KERASCOPE_ENGINE=keras for it, or --precision float32"
            )
        if precision == "bfloat16" and not cpu_native_bfloat16():
            raise PrecisionError(
                f"this CPU ({cpu_info()[0]}) has no bfloat16 units (AMX or AVX512-BF16), so "
                "OpenVINO would compute in float32 while saying bfloat16; use --precision "
                "float32"
            )


def cpu_engine(model: Any, precision: str) -> str:
    """The engine auto picks on a CPU for ``model`` in ``precision`` (see the module's rule)."""
    from kerascope.onnx_export import supports

    if not supports(model):
        return "keras"
    if precision == "bfloat16":
        return "openvino" if cpu_native_bfloat16() and openvino_installed() else "keras"
    if precision != "float32":
        return "keras"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "openvino" if openvino_installed() else "keras"
    measured = measured_choice()
    return measured if measured == "openvino" and openvino_installed() else "onnx"


def openvino_runner(model: Any, precision: str = "float32") -> Callable[[list], list]:
    """``run(xs) -> outputs``: ``model``'s converted graph compiled by OpenVINO for the CPU.

    The graph is the one onnxruntime runs (from the same disk cache). Each thread gets its own
    infer request (one request is not thread-safe); outputs are copies, so a result stays valid
    after the next call.
    """
    _require_openvino()
    check_graph_precision("openvino", precision)
    from kerascope.onnx_export import cache

    ov = import_openvino()

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    try:
        net = core.compile_model(core.read_model(cache.onnx_bytes(model)), "CPU", config)
    except Exception:  # noqa: BLE001  (a damaged cached graph: convert anew, as onnxruntime does)
        fresh = cache.onnx_bytes(model, refresh=True)
        net = core.compile_model(core.read_model(fresh), "CPU", config)
    outputs = list(net.outputs)
    local = threading.local()

    def run(xs: list) -> list:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = net.create_infer_request()
        feed = {i: np.asarray(x, np.float32) for i, x in enumerate(xs)}
        result = request.infer(feed)
        return [np.asarray(result[o], np.float32) for o in outputs]

    return run


# --- the measured choice, cached per CPU model ----------------------------------------------


def engines_path() -> Path:
    from kerascope.config import cache_dir

    return cache_dir() / ENGINES_FILE


def _read_all() -> dict:
    try:
        data = json.loads(engines_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measured_choice(cpu: str | None = None) -> str | None:
    """The float32 engine a :func:`measure` on this CPU model picked, if one was made with the
    installed engine versions (a newer onnxruntime or OpenVINO needs a new measurement)."""
    row = _read_all().get(cpu or cpu_info()[0])
    if not isinstance(row, dict) or row.get("versions") != _versions():
        return None
    engine = row.get("float32")
    return engine if engine in GRAPH_ENGINES else None


def measure(model: Any, batch: np.ndarray, rounds: int = 7, remember: bool = True) -> dict:
    """Time onnxruntime and OpenVINO (float32) on ``model`` in turn, ``rounds`` times each, and
    keep the choice for this CPU model: OpenVINO only when its median is ``MARGIN`` faster.

    Interleaved (A B A B ...) so a neighbour's load on a shared machine hits both alike; the
    median of the rounds, since one run there is noise. Returns the record it kept."""
    from kerascope.onnx_export import cache

    _require_openvino()
    session = cache.session(model)
    names = [i.name for i in session.get_inputs()]
    x = np.asarray(batch, np.float32)
    runs = {
        "onnx": lambda: session.run(None, {names[0]: x}),
        "openvino": (lambda ov_run: lambda: ov_run([x]))(openvino_runner(model)),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up: first-call allocations
        fn()
    for _ in range(max(1, rounds)):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(v) / len(x) * 1000 for name, v in seconds.items()}
    faster = ms["onnx"] / ms["openvino"] >= MARGIN
    record = {
        "float32": "openvino" if faster else "onnx",
        "ms_per_image": {name: round(v, 3) for name, v in ms.items()},
        "batch": int(len(x)),
        "versions": _versions(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if remember:
        from kerascope.files import write_json

        data = _read_all()
        data[cpu_info()[0]] = record
        engines_path().parent.mkdir(parents=True, exist_ok=True)
        write_json(engines_path(), data)
    return record


def _photos(size: tuple[int, int], count: int) -> np.ndarray:
    """``count`` real photos at ``size`` (scikit-image's samples when installed, else a
    deterministic noise picture: the engines' speed does not depend on the content)."""
    from kerascope.images import load_image, resize

    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        names = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
        pictures = [resize(load_image(folder / n), size) for n in names]
    except (ImportError, OSError):
        pictures = [np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)]
    return np.stack([pictures[i % len(pictures)] for i in range(count)])


def measure_default_model(rounds: int = 7, batch: int = 8) -> dict:
    """:func:`measure` on EfficientNet-Lite0 (the default model, offline weights) at ``batch``
    real photos, kept for this CPU model: ``python -m kerascope.engines``."""
    from kerascope.config import ensure_backend

    ensure_backend()
    from kerascope.zoo.models import load_model

    clf = load_model("efficientnet_lite0")
    return measure(clf.model, _photos(clf.input_size, batch), rounds)


if __name__ == "__main__":  # pragma: no cover  (a maintenance command, run by hand)
    record = measure_default_model()
    print(f"{cpu_info()[0]}: float32 on {record['float32']} "
          f"(ms per image {record['ms_per_image']}), kept in {engines_path()}")  # fmt: skip
