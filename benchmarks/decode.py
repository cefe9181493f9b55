"""Decoding JPEG files for a model, per JPEG decoder: what bounds `classify` of a folder and
`explain` on a many-core GPU machine, where the device waits for the host.

Each job decodes ``--files`` JPEGs of 500x375 (varied crops of the scikit-image photos, as
`benchmarks/gpu.py` makes them) in a pool of N threads, as kerascope's loaders do:
``classify`` decodes and fits each photo to 224² (`kerascope.sources.decode_item`); ``explain``
also keeps the full-size picture for drawing. Decoders: ``pillow`` and ``simplejpeg``
(libjpeg-turbo without the GIL; `kerascope.images.jpeg`), chosen per job through
KERASCOPE_JPEG_DECODER. Jobs interleave decoder by decoder; each figure is the median over
``--repeats`` [min-max], with the process CPU time per photo.

Each process sets glibc's malloc as the ``kerascope`` command does
(`kerascope.config.steadier_malloc`); ``--glibc-default`` leaves it as glibc starts.

``--gil`` (needs ``py-spy`` on PATH) also measures how long each photo holds Python's GIL in
one thread: a pool cannot decode faster than 1 / that, however many cores it has.

    python benchmarks/decode.py [--files 600] [--threads 1,2] [--repeats 3] [--gil]
        [--work classify,explain,picture] [--glibc-default]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _gpu_common import _photo_paths, _write_jpegs

DECODERS = ("pillow", "simplejpeg")
SIZE = (224, 224)
WORKS = ("classify", "explain", "picture")


def make_files(folder: Path, count: int) -> list[str]:
    photos = _photo_paths()
    names = [folder / f"{i:05d}.jpg" for i in range(count)]
    per = max(1, -(-count // len(photos)))
    for k, photo in enumerate(photos):
        if chunk := names[k * per : (k + 1) * per]:
            _write_jpegs((photo, chunk, (500, 375), k))
    return [str(n) for n in names]


def _blob() -> np.ndarray:
    """A Grad-CAM-like map as the device sends it: uint8 heat levels at the input size."""
    y, x = np.mgrid[0 : SIZE[0], 0 : SIZE[1]] / SIZE[0]
    return np.round(255 * np.exp(-((x - 0.55) ** 2 + (y - 0.45) ** 2) / 0.05)).astype(np.uint8)


BLOB = _blob()


def decode_one(path: str, work: str, out: str | None = None):
    """One photo's host work: ``classify`` decodes and fits it; ``explain`` keeps the photo
    too; ``picture`` also draws and writes explain's picture of a fixed map into ``out``."""
    from kerascope.sources import decode_item

    item = decode_item(path, SIZE, keep_up_to=0 if work == "classify" else 1 << 40)
    if item.error:
        raise RuntimeError(f"{path}: {item.error}")
    if work == "picture":
        from kerascope.cam.explain import Explanation
        from kerascope.cam.save import _draw_one, picture_source

        e = Explanation(path, class_index=285, class_id="n02124075", class_name="Egyptian_cat",
                        probability=0.771, box=item.box)  # fmt: skip
        draw = dict(method="gradcam", alpha=0.4, colormap="jet", colorbar=False, replace=True)
        target = Path(out) / (Path(path).stem + "-output.jpg")
        _draw_one(picture_source(path, item), (BLOB, item.shape, item.box), e, target, draw)
    return item


def job(paths: list[str], decoder: str, threads: int, work: str, out: str) -> tuple[float, float]:
    """(photos per second, CPU ms per photo) of one pass over ``paths``."""
    os.environ["KERASCOPE_JPEG_DECODER"] = decoder
    cpu, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(decode_one, paths, [work] * len(paths), [out] * len(paths)):
            pass
    wall = time.perf_counter() - start
    return len(paths) / wall, (time.process_time() - cpu) / len(paths) * 1e3


def gil_ms_per_photo(
    paths: list[str], decoder: str, work: str, glibc_default: bool
) -> float | None:
    """GIL-held milliseconds per photo in one thread, sampled by py-spy at 1 kHz without
    pausing the process (``--nonblocking``): py-spy's default stops the process for each
    sample, and that read 1.4-2.8x higher here (the pauses count as time the GIL is held;
    `gil_calibration.py`)."""
    spy = shutil.which("py-spy")
    if not spy:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        listing, raw = Path(tmp) / "files.txt", Path(tmp) / "raw.txt"
        listing.write_text("\n".join(paths))
        cmd = [spy, "record", "--gil", "--nonblocking", "-r", "1000", "-f", "raw", "-o", str(raw),
               "--", sys.executable, __file__, "--loop", str(listing), "--work", work, "--out",
               tmp] + (["--glibc-default"] if glibc_default else [])  # fmt: skip
        env = dict(os.environ, KERASCOPE_JPEG_DECODER=decoder)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        samples = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if "decode_one (" in stack:
                samples += int(count)
    return samples / (3 * len(paths))  # 1 sample = 1 ms; the loop decodes each file 3 times


def loop(listing: str, work: str, out: str) -> None:
    """The --gil child: every file's work 3 times in this thread."""
    from kerascope.sources import decode_item

    paths = Path(listing).read_text().splitlines()
    decode_item(paths[0], SIZE)  # imports and first-call work, outside decode_one's samples
    if work == "picture":
        from kerascope.cam.save import _draw_one  # noqa: F401
    for _ in range(3):
        for path in paths:
            decode_one(path, work, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="pool sizes, e.g. 1,4,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="classify,explain,picture",
                        help="classify (decode, fit), explain (keep the photo too), picture "
                        "(also draw and write explain's picture of a fixed map)")  # fmt: skip
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave malloc as glibc starts it")  # fmt: skip
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--gil", action="store_true", help="GIL time per photo (needs py-spy)")
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from kerascope import config

    if args.glibc_default:
        config.fewer_collections()  # the command's GC setting only
    else:
        config.command_process_settings()
    if args.loop:
        return loop(args.loop, args.work, args.out)

    from kerascope.images.jpeg import simplejpeg

    decoders = [d for d in DECODERS if d != "simplejpeg" or simplejpeg is not None]
    if len(decoders) == 1:
        print("simplejpeg is not installed (pip install simplejpeg): Pillow only")
    threads = sorted({int(t) for t in args.threads.split(",")})
    works = args.work.split(",")
    if unknown := set(works) - set(WORKS):
        parser.error(f"unknown --work {sorted(unknown)}; choose from {', '.join(WORKS)}")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(Path(folder), args.files)
        tmp = os.path.join(folder, "pictures")
        results: dict = {}
        for decoder in decoders:  # warm-up: imports, page cache
            job(paths[:50], decoder, 1, "picture", tmp)
        for _ in range(args.repeats):
            for work in works:
                for n in threads:
                    for decoder in decoders:
                        one = job(paths, decoder, n, work, tmp)
                        results.setdefault((work, n, decoder), []).append(one)
        gil = {}
        if args.gil:
            for work in works:
                for decoder in decoders:
                    gil[(work, decoder)] = gil_ms_per_photo(
                        paths[:200], decoder, work, args.glibc_default
                    )

    print(f"\n{args.files} JPEGs 500x375, {os.cpu_count()} CPUs; median [min-max] of", args.repeats)
    print(f"{'work':9s} {'threads':>7s} {'decoder':11s} {'photos/s':>22s} {'CPU ms/photo':>13s}")
    for (work, n, decoder), values in results.items():
        rates = [v[0] for v in values]
        cpu = statistics.median(v[1] for v in values)
        rate = f"{statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"
        print(f"{work:9s} {n:7d} {decoder:11s} {rate:>22s} {cpu:13.2f}")
    for (work, decoder), ms in gil.items():
        if ms is None:
            print("--gil: py-spy is not on PATH (pip install py-spy)")
            break
        print(f"GIL held per photo, {work}, {decoder}: {ms:.2f} ms (ceiling {1e3 / ms:,.0f}/s)")


if __name__ == "__main__":
    main()
