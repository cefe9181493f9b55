"""EfficientNet-Lite0 inference speed: kerascope beside its references, in one run.

Prints images/second at batch 1 and 32, median [min - max] over interleaved repeats, for
  - onnxruntime fp32 on kerascope's converted graph (the onnx engine: today's CPU default),
  - OpenVINO f32 on the same graph (the openvino engine; `pip install openvino`),
  - OpenVINO bf16, only on a CPU with bf16 units (AMX / AVX512-BF16; elsewhere it would
    silently compute in f32, so the row is left out and the script says so),
  - int8: the graph `--precision int8` builds (`kerascope.quantize`, cached) on onnxruntime
    and on OpenVINO, whether or not it met the agreement bound (its agreement is printed),
    and with `--int8-rungs` every rung of its ladder on onnxruntime (quantized here),
  - kerascope with the Keras engine forced (jit-compiled Keras on the active backend),
  - the reference PyTorch implementation (efficientnet-lite-pytorch, eager, no_grad),
  - onnxruntime running the reference exported by torch.onnx,
all on the same ported weights and the same uint8 batches (real photo crops); then which
engine auto picks here, `kerascope.classify` end to end on each graph engine (interleaved) and
the cold-start wall time of `kerascope classify` on one photo (a new process; weights cached).

    python benchmarks/classify_cpu.py [--repeats 5] [--engines-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import interleaved, spread, window_rate


def reference_torch(weights: Path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            return net((t - INPUT_MEAN) / INPUT_STD).numpy()

    return net, run


def reference_onnx(net):
    import onnxruntime as ort
    import torch

    from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD

    path = Path(tempfile.mkdtemp()) / "reference.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, 3, 224, 224),
        str(path),
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        nchw = ((x.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2)
        return session.run(None, {"x": np.ascontiguousarray(nchw)})[0]

    return run


def runner(session, name: str):
    """``fn(x)``: an onnxruntime session's outputs on a uint8 batch fed as float32."""
    return lambda x: session.run(None, {name: x.astype(np.float32)})


def cold_start(photo: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kerascope", "classify", str(photo), "--top", "1"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timed window")
    parser.add_argument(
        "--engines-only",
        action="store_true",
        help="only the kerascope CPU engines (no Keras, PyTorch, cold start)",
    )
    parser.add_argument("--int8-rungs", action="store_true",
                        help="also time every int8 rung (all int8 ...) on onnxruntime")  # fmt: skip
    args = parser.parse_args()

    import skimage

    import kerascope
    from kerascope.engines import openvino_installed
    from kerascope.inference import choose_engine, compiled
    from kerascope.precision import cpu_info, cpu_native_bfloat16
    from kerascope.zoo import registry
    from kerascope.zoo.weights import package_file

    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
    clf = kerascope.load_model("efficientnet_lite0")
    backend = os.environ.get("KERAS_BACKEND")
    candidates = {"onnxruntime fp32 (onnx engine)": compiled(clf.model, "onnx")}
    if openvino_installed():
        candidates["OpenVINO f32 (openvino engine)"] = compiled(clf.model, "openvino")
        if cpu_native_bfloat16():
            fwd = compiled(clf.model, "openvino", precision="bfloat16")
            candidates["OpenVINO bf16 (openvino engine)"] = fwd
    from kerascope import quantize

    int8 = quantize.int8_graph(clf.model)  # quantized and measured once, then from the cache
    int8_session = quantize._session(int8.payload)
    int8_input = int8_session.get_inputs()[0].name
    candidates["onnxruntime int8"] = lambda x: int8_session.run(
        None, {int8_input: x.astype(np.float32)}
    )
    if openvino_installed():
        from kerascope.engines import import_openvino

        core = import_openvino().Core()
        int8_ov = core.compile_model(core.read_model(int8.payload), "CPU",
                                     {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
        candidates["OpenVINO int8"] = lambda x: int8_ov(x.astype(np.float32))
    rungs = {}
    if args.int8_rungs:
        from kerascope.onnx_export import cache

        fp32 = cache.onnx_bytes(clf.model)
        crops = quantize.photo_crops(clf.input_size, quantize.CALIBRATION_IMAGES, 7)
        for i, keep in enumerate(quantize.LADDER):
            rung = quantize._session(quantize.quantize_graph(fp32, crops, keep))
            name = f"onnxruntime int8, rung {i + 1}"
            rungs[name] = "float32 kept: first conv, head" + "".join(f", {k}" for k in keep)
            candidates[name] = runner(rung, int8_input)
    cpu = cpu_info()[0]
    bf16 = "has bf16 units" if cpu_native_bfloat16() else "no bf16 units: no bf16 row"
    print(f"CPU: {cpu}, {os.cpu_count()} threads, {bf16}; openvino "
          f"{'installed' if openvino_installed() else 'not installed'}")  # fmt: skip
    if not args.engines_only:
        import torch

        net, torch_run = reference_torch(package_file(registry.get("efficientnet_lite0")))
        candidates[f"kerascope (keras engine, {backend})"] = compiled(clf.model, "keras")
        candidates["reference PyTorch eager"] = torch_run
        candidates["onnxruntime (reference via torch.onnx)"] = reference_onnx(net)
        print(f"torch threads {torch.get_num_threads()}")
    # Real-photo crops (the scikit-image samples), as `kerascope models --measure` times them.
    from kerascope.measure import sample_batch

    batches = {bs: sample_batch(clf.input_size[0], bs) for bs in (1, 32)}
    for fn in candidates.values():  # warm-up (compilation, first-call allocations)
        for batch in batches.values():
            fn(batch)
    contenders = {
        (name, bs): (lambda fn=fn, batch=batch: window_rate(fn, batch, args.seconds))
        for name, fn in candidates.items()
        for bs, batch in batches.items()
    }
    rates = interleaved(contenders, args.repeats, show=False)
    print(f"img/s, median [min - max] over {args.repeats} interleaved repeats")
    print(f"{'engine':<44}{'batch 1':>22}{'batch 32':>24}")
    for name in candidates:
        print(f"{name:<44}{spread(rates[(name, 1)]):>22}{spread(rates[(name, 32)]):>24}")
    base = "onnxruntime fp32 (onnx engine)"
    print(f"int8 graph: {int8.quantizer}; {int8.agreement.text()} on {int8.agreement.images} "
          f"real-photo crops ({'meets' if int8.agreement.met else 'misses'} the bound "
          f"{quantize.bound_text()})")  # fmt: skip
    for name, kept in rungs.items():
        print(f"{name}: {kept}")
    for name in candidates:  # per-repeat ratios: a neighbour's load hits both sides of one
        if name.startswith("OpenVINO") or "int8" in name:
            ratios = {bs: np.divide(rates[(name, bs)], rates[(base, bs)]) for bs in (1, 32)}
            shown = {bs: f"{np.median(r):.2f}x [{min(r):.2f} - {max(r):.2f}]"
                     for bs, r in ratios.items()}  # fmt: skip
            print(f"{name} / onnxruntime fp32, per repeat: batch 1 {shown[1]}, "
                  f"batch 32 {shown[32]}")  # fmt: skip
    print(f"auto picks here: {choose_engine(clf.model)} (float32), "
          f"{choose_engine(clf.model, precision='bfloat16')} (bfloat16)")  # fmt: skip

    folder = Path(tempfile.mkdtemp())
    for i in range(64):  # distinct files: inputs are de-duplicated by path
        shutil.copy(photo, folder / f"photo_{i:02d}.png")
    engines = ["onnx"] + (["openvino"] if openvino_installed() else [])

    def end_to_end(engine: str) -> float:
        os.environ["KERASCOPE_ENGINE"] = engine
        try:
            start = time.perf_counter()
            results = kerascope.classify(str(folder), model=clf, batch_size=32)
            assert len(results) == 64 and all(r.ok for r in results)
            return 64 / (time.perf_counter() - start)
        finally:
            os.environ.pop("KERASCOPE_ENGINE")

    for engine in engines:
        end_to_end(engine)  # warm-up
    e2e = interleaved({e: (lambda e=e: end_to_end(e)) for e in engines}, args.repeats, False)
    for engine in engines:
        print(f"kerascope.classify end to end on {engine} (decode+resize+infer, 64 PNG files "
              f"451x300): {spread(e2e[engine])} img/s")  # fmt: skip
    if int8.agreement.met:  # else `--precision int8` refuses to run here: nothing to time

        def int8_end_to_end() -> float:
            start = time.perf_counter()
            results = kerascope.classify(str(folder), model=clf, batch_size=32, precision="int8")
            assert len(results) == 64 and all(r.ok for r in results)
            return 64 / (time.perf_counter() - start)

        int8_end_to_end()
        rates8 = interleaved({"int8": int8_end_to_end, "onnx": lambda: end_to_end("onnx")},
                             args.repeats, False)  # fmt: skip
        print(f"kerascope.classify --precision int8 end to end: {spread(rates8['int8'])} img/s "
              f"(float32 onnx beside it: {spread(rates8['onnx'])})")  # fmt: skip
    else:
        print("kerascope.classify --precision int8: refused here (agreement above), not timed")
    if args.engines_only:
        return
    times = sorted(cold_start(photo) for _ in range(3))
    print(
        f"cold start `kerascope classify chelsea.png` (new process, cached weights): "
        f"min {times[0]:.2f} s, median {times[1]:.2f} s"
    )


if __name__ == "__main__":
    main()
