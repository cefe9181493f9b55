"""CPU milliseconds per image for the zoo table, measured on demand and remembered per CPU.

Like the time-per-step columns of the keras.io applications table, but for this machine: a
number only means something next to the processor it was measured on, so the cache file is
keyed by CPU name, then model. Measured through the engine `classify` uses
(`kerascope.inference.compiled`) on a batch of real photos at the model's input size: the
median of a few timed runs after warm-up, since one run on a shared machine is noise.

It sits above the zoo (beside `output` and `cli_models`, its users) because measuring runs
`inference` and `export`, which themselves build on the zoo.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kerascope.config import cache_dir
from kerascope.errors import KerascopeError
from kerascope.files import write_json

TIMINGS_FILE = "cpu_timings.json"
BATCH = 8
WARMUP = 2
RUNS = 5


class MeasureError(KerascopeError, RuntimeError):
    """A measurement that would not be a CPU figure (the backend computes on a GPU)."""


@dataclass(frozen=True)
class Timing:
    """One model measured on one CPU."""

    ms_per_image: float  # median over RUNS timed batches
    engine: str  # "onnx" or "keras", as classify would run it
    backend: str  # the Keras backend
    batch: int
    measured_at: str  # UTC, ISO 8601


def cpu_name() -> str:
    """The processor's model name: the key measurements are saved under."""
    from kerascope.precision import cpu_info

    return cpu_info()[0]


def timings_path() -> Path:
    return cache_dir() / TIMINGS_FILE


def _read_all() -> dict:
    """Every CPU's timings; a missing or damaged file is no timings (it is only a cache)."""
    try:
        data = json.loads(timings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def timings(cpu: str | None = None) -> dict[str, float]:
    """``{model name: ms per image}`` measured on ``cpu`` (default: this machine's)."""
    rows = _read_all().get(cpu or cpu_name(), {})
    out = {}
    for model, row in rows.items() if isinstance(rows, dict) else ():
        try:
            out[model] = float(row["ms_per_image"])
        except (TypeError, KeyError, ValueError):
            continue  # one damaged entry costs that entry only
    return out


def sample_batch(size: int, count: int = BATCH) -> np.ndarray:
    """``count`` photos at ``size`` x ``size``, uint8: scikit-image's samples when installed
    (as `kerascope export` checks on), else generated pictures; repeated to fill the batch."""
    from kerascope.export import check_images

    images, _ = check_images((size, size))
    return images[np.arange(count) % len(images)]


def measure(name: str, runs: int = RUNS) -> Timing:
    """Time ``name`` with its ImageNet weights on this CPU and remember the result."""
    from kerascope.config import ensure_backend

    ensure_backend()
    import keras

    from kerascope.inference import compiled, on_cpu
    from kerascope.zoo.models import load_model

    if not on_cpu():
        raise MeasureError(
            f"the {keras.backend.backend()} backend computes on an accelerator here; the "
            "table's column is CPU time (hide the GPU, e.g. CUDA_VISIBLE_DEVICES=, to measure)"
        )
    clf = load_model(name)
    forward = compiled(clf.model)
    batch = sample_batch(clf.input_size[0])
    for _ in range(WARMUP):
        forward(batch)
    seconds = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        forward(batch)
        seconds.append(time.perf_counter() - start)
    timing = Timing(
        ms_per_image=round(statistics.median(seconds) / len(batch) * 1000, 2),
        engine=forward.engine,
        backend=keras.backend.backend(),
        batch=len(batch),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    _remember(clf.name, timing)
    return timing


def _remember(model: str, timing: Timing) -> None:
    data = _read_all()
    cpu = cpu_name()
    rows = data.get(cpu) if isinstance(data.get(cpu), dict) else {}
    data[cpu] = {**rows, model: asdict(timing)}
    timings_path().parent.mkdir(parents=True, exist_ok=True)
    write_json(timings_path(), data)
