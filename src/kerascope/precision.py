"""Which numeric precision a job computes in: the one rule behind every ``--precision``.

``auto`` is bfloat16 mixed precision where the device computes it natively (NVIDIA GPUs from
Ampere on, TPUs), and float32 everywhere else: on a CPU without native bf16 a reduced-precision
graph is slower, and float32 is what the published accuracies were measured in. ``float16``
is offered for older GPUs; in training it needs loss scaling, which Keras's ``LossScaleOptimizer``
does. Weights always stay float32 ("mixed" policies): only activations and matrix products run in
the reduced type, so a saved model is the same file whatever precision trained it.
"""

from __future__ import annotations

import os

from kerascope.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# int8: inference on the CPU only, a calibrated graph that must measure close to float32
# (`kerascope.quantize`); training and the keras engine have no int8.
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")


ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "f32": "float32"}


class PrecisionError(ConfigError):
    """A precision that cannot run as asked (the onnx engine computes in float32 only)."""


def check_precision(name: str | None, choices: tuple[str, ...] = PRECISIONS) -> str:
    """``name`` (or ``KERASCOPE_PRECISION``, or ``auto``) checked against ``choices`` (int8
    only where a forward on the CPU graph engines runs: `resolve_precision`)."""
    value = (name or os.environ.get("KERASCOPE_PRECISION") or "auto").strip().lower()
    value = ALIASES.get(value, value)
    if value not in choices:
        given = f"{name!r}" if name else f"KERASCOPE_PRECISION={value!r}"
        raise ConfigError(f"precision must be one of {', '.join(choices)}; got {given}")
    return value


def native_bfloat16() -> bool:
    """Whether the default device of the Keras backend computes bfloat16 natively (sm 8.0+, TPU)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "tpu":
            return True
        if device.platform != "gpu":
            return False
        capability = getattr(device, "compute_capability", None)
        try:
            return float(capability) >= 8.0
        except (TypeError, ValueError):
            return False
    if backend == "torch":
        import torch

        from kerascope.batch_sizes import device_kind  # Keras's device, not what is installed

        if not (device_kind() == "gpu" and torch.cuda.is_available()):
            return False
        return bool(_torch_bf16_supported(torch))
    return False


def _torch_bf16_supported(torch) -> bool:
    """bfloat16 in hardware on torch's CUDA device: sm 8.0+, as JAX's rule above. Why not plain
    ``is_bf16_supported()``: it also says True where bf16 is only emulated (V100, T4), slower
    than float32 there; ``including_emulation=False`` (torch 2.13 has it) leaves those out."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch: no emulation is counted; check the capability too
        major, _ = torch.cuda.get_device_capability()
        return major >= 8 and torch.cuda.is_bf16_supported()


def cpu_info() -> tuple[str, frozenset[str]]:
    """This machine's processor model name and its feature flags, read from ``/proc/cpuinfo``
    (Linux); elsewhere what `platform` knows and no flags (so no native bf16 is claimed)."""
    import platform

    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = " ".join(value.split())
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_native_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AMX tiles or AVX512-BF16). Why it
    matters: without them a bf16 graph is converted back to float32 on every op, slower than
    float32 and less exact, so CPU bf16 is offered only where these flags are present."""
    flags = cpu_info()[1] if flags is None else flags
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(name: str | None = None) -> str:
    """The concrete precision a job runs in: ``auto`` becomes bfloat16 or float32 by device."""
    value = check_precision(name, INFERENCE_PRECISIONS)
    if value == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return value


# Why auto is float32 for pixel attributions (`map_precision`): measured on an H100 with
# EfficientNet-Lite0 on 4 scikit-image photos, the correlation of saliency maps with float32's.
PIXEL_AUTO_NOTE = (
    "auto computes pixel attributions (input gradients) in float32: in bfloat16 they came out "
    "too coarse (correlation with float32 maps 0.50-0.84 on Lite0; CAM methods >= 0.998); "
    "--precision bfloat16 forces it"
)


def map_precision(name: str | None = None, pixels: bool = False) -> str:
    """What explanation maps compute in for a job asked to run in ``name``: `resolve_precision`,
    except int8, which has no gradients (a quantized graph is not differentiable): a server or
    classifier running int8 explains in float32, and the explainer's ``precision`` says so.

    ``pixels``: for a pixel-attribution method (gradients with respect to the input), ``auto``
    stays float32 where it would be bfloat16 (`PIXEL_AUTO_NOTE`); a bfloat16 asked for by
    name is honoured."""
    value = resolve_precision(name)
    if value == "int8" or (pixels and auto_kept_float32(name)):
        return "float32"
    return value


def auto_kept_float32(name: str | None) -> bool:
    """Whether ``name`` (or ``KERASCOPE_PRECISION``) is ``auto`` on a device where auto means
    bfloat16: what a pixel-attribution method computes in float32 instead (`map_precision`)."""
    return check_precision(name, INFERENCE_PRECISIONS) == "auto" and native_bfloat16()


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy name for a resolved precision (``mixed_bfloat16`` ...)."""
    if precision == "int8":
        raise PrecisionError(
            "int8 is for inference on the CPU (classify, evaluate, predict, features); Keras "
            "computes in float32, bfloat16 or float16: use one of those here"
        )
    return _POLICIES[check_precision(precision) if precision != "auto" else resolve_precision()]


PRECISION_HELP = (
    "what the model computes in: auto = bfloat16 mixed precision on GPUs that compute it "
    "natively, float32 elsewhere, CPUs included (default, or $KERASCOPE_PRECISION); bfloat16 "
    "and float16 run on the keras engine, with float32 weights and outputs, except bfloat16 on "
    "a CPU with bf16 units (AMX, AVX512-BF16), which runs on OpenVINO when it is installed; "
    "int8 (CPU) runs a calibrated int8 graph only if it measured close to float32 on real "
    "photos (top-1 agreement >= 0.99, mean |dp| <= 0.005), else it is refused with numbers"
)


def add_precision_option(parser, help: str = PRECISION_HELP, int8: bool = True) -> None:
    """``--precision`` on a command that runs a model (classify, evaluate, predict, features);
    ``int8`` where the command computes class probabilities on the CPU engine (features and
    batch refused it at run time while their help offered it)."""
    parser.add_argument("--precision", type=_cli_name, default=None, help=help,
                        choices=INFERENCE_PRECISIONS if int8 else PRECISIONS)  # fmt: skip


def _cli_name(text: str) -> str:
    """``--precision``'s value, aliases (bf16, fp16, fp32) read as their names."""
    value = text.strip().lower()
    return ALIASES.get(value, value)


def slower_here(precision: str, engine: str | None = None) -> str | None:
    """Why ``precision`` runs slower than float32 here, or None: bfloat16 and float16 on the
    keras engine of a CPU, where XLA converts around most ops, bf16 units or not (measured on
    an earlier development machine, an AMD EPYC with AVX512-BF16: a finetune epoch 77.8 s
    against 16 s; classify 8.4 img/s against 9.1). Users read reduced precision as a speed-up."""
    if precision not in ("bfloat16", "float16") or engine not in (None, "keras"):
        return None
    from kerascope.batch_sizes import device_kind

    if device_kind() != "cpu":
        return None
    return (
        f"{precision} on a CPU's keras engine is slower than float32, not faster (XLA "
        "converts around most ops): it shows what a GPU would compute"
    )


def ran_in(precision: str, engine: str | None = None) -> str:
    """The line a command prints about what it computed in, e.g. ``computing in bfloat16 (mixed:
    float32 weights and outputs) on the keras engine``."""
    mixed = " (mixed: float32 weights and outputs)" if precision != "float32" else ""
    if engine == "openvino" and precision != "float32":
        mixed = " (OpenVINO's bf16 inference: float32 in and out)"
    if precision == "int8":  # never on the keras engine: no engine named unless given
        mixed = " (a calibrated int8 graph that met the float32 agreement bound)"
    elif engine is None and precision != "float32":
        engine = "keras"
    return f"computing in {precision}{mixed}" + (f" on the {engine} engine" if engine else "")
