"""Training img/s on 1 and 2 devices (issue 19): ``kerascope train --devices``.

    .venv/bin/python benchmarks/train_devices.py            # CPU: 1 and 2 virtual devices
    .venv/bin/python benchmarks/train_devices.py --quick    # smoke run, tiny sizes

Each row is the CLI a user runs (``python -m kerascope train``) in its own subprocess, on a
folder of real-photo crops (scikit-image's chelsea and coffee, two classes): the whole graph
in Keras (``--engine keras``, augmentation inside the compiled step), the same global batch
and seed on every row. The number is the steady training img/s of ``history.csv``'s
``images_per_second`` (median over the epochs after the first, which compiles); the rows
run in turn, ``--repeats`` times, and each prints its median with [min-max].

On a CPU the two devices are virtual (``XLA_FLAGS=--xla_force_host_platform_device_count=2``):
they share the same cores, so this measures the cost of the split (sharding, the gradient
all-reduce), not a speed-up; XLA's CPU backend already uses every core for one device. On a
machine with a GPU the script adds a 1-GPU row; one GPU cannot show scaling, so the
multi-GPU goal in README stays unmeasured until a machine with several is available.

``--prefix`` measures the split trainer's frozen prefix instead: EfficientNet-Lite0 (real
weights, 224 px) as one frozen forward on the JAX engine over real-photo batches, through
``kerascope.training.split.prefix_forward`` inside the run's placement, on 1 device and
sharded over 2 (each device its half of every batch), with onnxruntime (the CPU default, one
forward per batch whatever the devices) beside them. Rows interleaved, median [min-max] of
the timed batches' img/s.

    .venv/bin/python benchmarks/train_devices.py --prefix
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kerascope.testing import cat_and_coffee


def run(data: Path, out: Path, devices: str, env_extra: dict[str, str], args) -> float:
    """Steady img/s of one ``kerascope train`` in a fresh process."""
    env = {**os.environ, "KERAS_BACKEND": "jax", **env_extra}
    cmd = [sys.executable, "-m", "kerascope", "train", str(data), "--recipe", args.recipe,
           "--engine", "keras", "--epochs", str(args.epochs), "--batch-size", str(args.batch),
           "--image-size", str(args.size), "--patience", str(args.epochs), "--devices", devices,
           "-o", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    with open(out / "history.csv", newline="") as f:
        rates = [float(r["images_per_second"]) for r in csv.DictReader(f)][1:]
    return statistics.median(rates)


PREFIX_CHILD = """
import json, sys, time
import numpy as np
from kerascope.images import load_image, resize
from kerascope.testing import skimage_data
from kerascope.training import devices as placing
from kerascope.training.split import prefix_forward
from kerascope.zoo.models import load_model

devices, engine, size, batch, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
photos = [resize(load_image(skimage_data() / n), (size, size))
          for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
x = np.stack([photos[i % 4] for i in range(batch)])
with placing.data_parallel(devices, batch):
    model = load_model("efficientnet_lite0").model
    forward = prefix_forward(model, engine)
    forward(x)  # compiles
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        forward(x)
        rates.append(batch / (time.perf_counter() - start))
print(json.dumps({"kind": type(forward).__name__, "rates": rates}))
"""


def prefix_rows(args) -> None:
    """The frozen prefix's img/s on 1 device, sharded over 2, and on onnxruntime."""
    two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    rows = [("keras, 1 CPU device", "1", "keras", {"JAX_PLATFORMS": "cpu"}),
            ("keras, 2 virtual devices", "2", "keras", two),
            ("onnx, 2 virtual devices", "2", "onnx", two)]  # fmt: skip
    print(f"frozen prefix (EfficientNet-Lite0, {args.size}px, batch {args.batch}), "
          f"{os.cpu_count()} cores; img/s per timed batch")  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name, *_ in rows}
    kinds: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, devices, engine, env in rows:
            proc = subprocess.run(
                [sys.executable, "-c", PREFIX_CHILD, devices, engine, str(args.size),
                 str(args.batch), str(args.epochs)],
                env={**os.environ, "KERAS_BACKEND": "jax", **env}, capture_output=True,
                text=True, timeout=3600,
            )  # fmt: skip
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            rates[name] += got["rates"]
            kinds[name] = got["kind"]
    for name, got in rates.items():
        print(f"  {name:<26} {statistics.median(got):8.1f} img/s [{min(got):.1f}-{max(got):.1f}]"
              f"   ({kinds[name]})", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", action="store_true", help="time the split trainer's prefix")
    p.add_argument("--recipe", default="scratch", help="scratch (3 conv blocks) or lenet")
    p.add_argument("--images", type=int, default=160, help="photos per class")
    p.add_argument("--size", type=int, default=96, help="image side")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--epochs", type=int, default=4, help="epochs (the first is not counted)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each row, interleaved")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.recipe, args.images, args.size, args.batch, args.epochs = "lenet", 24, 32, 8, 2
        args.repeats = 1
    if args.prefix:
        args.size = 224  # the zoo model's input
        prefix_rows(args)
        return
    import jax  # only to see what this machine has; the rows run in their own processes

    gpu = jax.default_backend() != "cpu"
    with tempfile.TemporaryDirectory(prefix="train-devices-") as tmp:
        data = cat_and_coffee(Path(tmp) / "data", args.images, max(args.size, 40))
        two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
        rows = [("1 CPU device", "1", {"JAX_PLATFORMS": "cpu"}),
                ("2 virtual CPU devices", "2", two)]  # fmt: skip
        if gpu:
            rows.append(("1 GPU", "1", {}))
        print(f"kerascope train --recipe {args.recipe}, {2 * args.images} photos at "
              f"{args.size}px, global batch {args.batch}, {os.cpu_count()} cores; steady "
              "img/s (median of epochs 2+)")  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for repeat in range(args.repeats):  # rows interleaved: a neighbour's load hits all
            for name, devices, env in rows:
                out = Path(tmp) / f"{name.replace(' ', '-')}-{repeat}"
                rates[name].append(run(data, out, devices, env, args))
        base = statistics.median(rates[rows[0][0]])
        for name, got in rates.items():
            rate = statistics.median(got)
            print(f"  {name:<24} {rate:8.1f} img/s [{min(got):.1f}-{max(got):.1f}]   "
                  f"({rate / base:.2f}x the 1-device row)", flush=True)  # fmt: skip
        if gpu:
            print("  one GPU cannot show scaling: the multi-GPU goal stays unmeasured")


if __name__ == "__main__":
    main()
