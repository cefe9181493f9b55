"""What the on-disk ONNX cache saves: converting a model vs hashing it and reading the file.

Why: every command rebuilds its model; without the cache each one converts it to ONNX again.
The cache key hashes every weight, so hashing must cost much less than converting. Two fresh
processes share one empty cache folder: the first converts and stores, the second reads.

    python benchmarks/onnx_cache.py                      # efficientnet_lite0
    python benchmarks/onnx_cache.py --model efficientnet_lite2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(model_name: str) -> dict:
    """One fresh process: time the key, the conversion and ``compiled(model, "onnx")``."""
    import numpy as np

    from kerascope import inference
    from kerascope.onnx_export import cache, export
    from kerascope.zoo.models import load_model

    model = load_model(model_name).model
    rows = {}
    start = time.perf_counter()
    key = cache.model_key(model)
    rows["model_key (config + sha256 of weights), first"] = time.perf_counter() - start
    start = time.perf_counter()
    hit = (cache.folder() / f"{key}.onnx").is_file()
    fwd = inference.compiled(model, "onnx")
    rows[f"compiled(model, 'onnx') [{'cache hit' if hit else 'miss: convert + store'}]"] = (
        time.perf_counter() - start
    )
    start = time.perf_counter()
    fwd(np.zeros((1, *model.input_shape[1:]), np.uint8))
    rows["first forward, batch 1"] = time.perf_counter() - start
    best = {"model_key, again": cache.model_key, "keras_to_onnx (reference)": export.keras_to_onnx}
    for name, fn in best.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(model)
            times.append(time.perf_counter() - start)
        rows[f"{name}, best of 3"] = min(times)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model)))
        return
    env = dict(os.environ, KERASCOPE_HOME=tempfile.mkdtemp(prefix="kerascope-bench-"))
    env.setdefault("KERAS_BACKEND", "jax")
    cmd = [sys.executable, __file__, "--model", args.model, "--child"]
    print(f"{args.model}, {os.cpu_count()} CPU cores, fresh cache folder {env['KERASCOPE_HOME']}")
    for run in ("first process", "second process"):
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        print(f"\n{run}")
        for name, seconds in json.loads(out.splitlines()[-1]).items():
            print(f"  {name:<58}{seconds:8.3f} s")


if __name__ == "__main__":
    main()
