"""Default batch sizes by device: the one rule behind the ``--batch-size`` defaults.

Why it depends on the device: on a CPU a batch of 32 (classify) or 16 (explain) already keeps
every core busy and larger ones only cost memory (benchmarks/classify_cpu.py), while a GPU
idles at such sizes: on an H200, EfficientNet-Lite0 ran 13,104 img/s at batch 256 (issue 18's
table). Explain keeps half of classify's size: its backward pass holds the activations too.
An explicit ``-b`` always wins; this only fills in what was not given.
"""

from __future__ import annotations

import numbers
from typing import Any

# work -> device kind -> images per batch
BATCH_SIZES: dict[str, dict[str, int]] = {
    "classify": {"cpu": 32, "gpu": 256, "tpu": 256},
    "explain": {"cpu": 16, "gpu": 128, "tpu": 128},
}
DEVICE_KINDS = ("cpu", "gpu", "tpu")
REFERENCE_SIDE = 224  # the GPU and TPU sizes above are for inputs of this side
MIN_DEVICE_BATCH = 8


def device_kind() -> str:
    """``"gpu"``, ``"tpu"`` or ``"cpu"``: what the active Keras backend computes on by default.

    Imports the backend (the command is about to run a model on it anyway)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platform = jax.default_backend()
        return "cpu" if platform == "cpu" else "tpu" if platform == "tpu" else "gpu"
    if backend == "torch":  # Keras's torch device: cuda, mps, xpu, or cpu (also when
        from keras.src.backend.torch.core import get_device  # KERAS_TORCH_DEVICE=cpu says so)

        return "cpu" if str(get_device()).startswith("cpu") else "gpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "cpu"


def default_batch_size(
    work: str, kind: str | None = None, input_size: tuple[int, int] | None = None
) -> int:
    """Images per batch for ``work`` (``classify`` or ``explain``) on ``kind`` (a device kind;
    None: this process's, `device_kind`) for a model of ``input_size`` (height, width).

    On a GPU or TPU the sizes are for 224² inputs: a larger input gets fewer images, by its
    pixels, rounded down to a multiple of 8 (EfficientNet-B7 at 600²: explain 16, classify 32),
    so a batch's activations stay about the same size (128 of 600² for explain needed well
    over an H100's 80 GB). On a CPU the sizes stay (they only fill the cores)."""
    if work not in BATCH_SIZES:
        raise ValueError(f"work must be one of {', '.join(BATCH_SIZES)}, got {work!r}")
    kind = device_kind() if kind is None else kind
    if kind not in DEVICE_KINDS:
        raise ValueError(f"device kind must be one of {', '.join(DEVICE_KINDS)}, got {kind!r}")
    size = BATCH_SIZES[work][kind]
    if kind == "cpu" or input_size is None:
        return size
    scaled = size * REFERENCE_SIDE**2 / max(1, int(input_size[0]) * int(input_size[1]))
    return max(MIN_DEVICE_BATCH, min(size, int(scaled) // 8 * 8))


def batch_size_help(work: str) -> str:
    """``--batch-size``'s help for ``work``, the defaults read from `BATCH_SIZES`."""
    sizes = BATCH_SIZES[work]
    return (f"images per batch (default: {sizes['cpu']} on a CPU, {sizes['gpu']} on a GPU or "
            f"TPU for {REFERENCE_SIDE}-px models, fewer for larger inputs)")  # fmt: skip


def batch_size_or_default(
    asked: int | None, work: str, input_size: tuple[int, int] | None = None
) -> int:
    """``asked`` when given (an explicit -b wins), else `default_batch_size` on this device
    for a model of ``input_size``."""
    if asked is not None:
        return checked_batch_size(asked)
    return default_batch_size(work, input_size=input_size)


def checked_batch_size(value: Any) -> int:
    """``value`` as a batch size: a whole number of at least 1, else one line (0 gave no rows
    and exit 0, a negative one a NumPy traceback)."""
    return whole_number("batch_size", value, 1)


def whole_number(name: str, value: Any, least: int) -> int:
    """``value`` as an int of at least ``least``, else a ConfigError naming ``name``."""
    from kerascope.errors import ConfigError

    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or value < least:
        raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}")
    return int(value)
