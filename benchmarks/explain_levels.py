"""What explain's uint8 heat levels save per batch (issue 18): bytes copied off the device, the
copy, and the quantisation the picture threads no longer do.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/explain_levels.py [--batch 128] [--size 224]

On a CPU the "device" is the host, so the copy is a proxy; on a GPU it is the transfer that
held the feeding thread (~19 ms per batch of float32 maps in issue 18's profile).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    import jax

    from kerascope.cam.overlay import to_levels

    maps = np.random.default_rng(0).random((args.batch, args.size, args.size), np.float32)
    floats = jax.device_put(maps)
    levels = jax.device_put(to_levels(maps))
    floats.block_until_ready()
    levels.block_until_ready()
    print(f"{args.batch} maps of {args.size}x{args.size} on {jax.devices()[0]}")
    print(f"bytes off the device: float32 {maps.nbytes / 1e6:.1f} MB, "
          f"uint8 {maps.nbytes / 4e6:.1f} MB")  # fmt: skip
    copy_f = best_ms(lambda: np.array(floats), args.repeats)
    copy_q = best_ms(lambda: np.array(levels), args.repeats)
    print(f"copy to the host: float32 {copy_f:.2f} ms, uint8 {copy_q:.2f} ms (best of "
          f"{args.repeats})")  # fmt: skip
    quantise = best_ms(lambda: to_levels(maps), max(1, args.repeats // 2))
    print(f"host quantisation the pictures no longer need: {quantise:.1f} ms per batch")


if __name__ == "__main__":
    main()
