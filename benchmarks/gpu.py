"""Every row of issue 18's table, kerascope beside a timm/PyTorch peer, in one command.

On a GPU machine (one H200, 16 cores: see scripts/gpu_run.sh for the exact device command)::

    PYTHONPATH=src KERAS_BACKEND=jax python3 benchmarks/gpu.py --out "$OUT"

and on a CPU, as a smoke run of every code path with tiny sizes (peer rows that need CUDA or
torchvision say so)::

    .venv/bin/python benchmarks/gpu.py --quick

Rows: model forward (EfficientNet-Lite0 and ResNet-50, batch 256, uint8 from the host, fp32 and
bf16); ``classify`` of in-memory arrays (2,048 x 224²) and of a JPEG folder (3,000 JPEGs
500x375, warm and first call in a fresh process); the first call on a new batch shape and on
the last partial batch; ``explain`` Grad-CAM of 1,024 files with the pictures written;
``kerascope train --recipe transfer`` (bf16 and fp32) and ``--recipe finetune`` stage 2, steady
epochs with augmentation, on a 2-class folder of 1,200 photos; each beside the peer a PyTorch
user writes (timm eager, a 16-worker DataLoader, torchvision augmentation; after
shared/anchors/peer_gpu_pipeline.py).

How it measures: kerascope runs as a user runs it, through its public API (``load_model``,
``inference.compiled``, ``classify``, ``cam.save.save_explanations``) in a worker process and
through the CLI (``python -m kerascope train``) in subprocesses; the peer runs in another worker.
This process imports neither JAX nor torch: it asks the two workers in turn, repeat by repeat
(K P K P ...), so a neighbour's load hits both alike, and reports the median with [min - max].
Options that kerascope does not have yet (``precision=``, ``--precision``) are detected
(``inspect.signature``, ``--help``) and the row says n/a. Every row has a time budget and runs
under try/except: a failure or a timeout is recorded and the next row runs. The table is printed
and written with the JSON to ``--out`` (default ``$OUT``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

# A GPU user's batch sizes (the peer's DataLoader uses 256): the CLI default of 32 is a CPU one.
CLASSIFY_BATCH = 256
EXPLAIN_BATCH = 128
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # _timing

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")  # fmt: skip


@dataclass
class Sizes:
    """How much work each row does; ``quick`` is a CPU smoke run of the same code paths."""

    batch: int = 256  # model forward batch
    steps: int = 20  # forward calls per timed window
    repeats: int = 3  # interleaved repeats per row
    arrays: int = 2048  # classify of in-memory arrays
    jpegs: int = 3000  # the JPEG folder
    jpeg_size: tuple[int, int] = (500, 375)
    explain_files: int = 1024
    train_images: int = 1200  # 2 classes
    train_batch: int = 256
    image_size: int = 224  # training
    transfer_epochs: int = 8
    finetune_epochs: str = "1,8"
    peer_epochs: int = 2  # peer training epochs per interleaved call
    workers: int = 16  # peer DataLoader workers (capped by the cores)
    budget: float = 395.0  # seconds for the whole script (setup included)
    # seconds per group: they and the setup (~25 s) fit in ``budget``; no group runs past its
    # own nor the script's deadline (each train run stops at its share of the train group)
    budgets: tuple = (("forward", 65), ("arrays", 20), ("folder", 30), ("compile", 25),
                      ("explain", 35), ("first", 45), ("train", 145))  # fmt: skip


QUICK = Sizes(batch=4, steps=2, repeats=2, arrays=24, jpegs=24, jpeg_size=(200, 150),
              explain_files=8, train_images=24, train_batch=4, image_size=64,
              transfer_epochs=3, finetune_epochs="1,3", peer_epochs=1, workers=2, budget=2400,
              budgets=(("forward", 600), ("arrays", 200), ("folder", 200), ("compile", 200),
                       ("explain", 300), ("first", 300), ("train", 900)))  # fmt: skip


class NotAvailable(Exception):
    """A row this version of kerascope (or this machine, for the peer) cannot run: n/a."""


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (an option other engineers are adding)."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def default_of(fn, name: str, fallback):
    import inspect

    try:
        value = inspect.signature(fn).parameters[name].default
    except (TypeError, ValueError, KeyError):
        return fallback
    return fallback if value is inspect.Parameter.empty else value


# ----------------------------------------------------------------------------------- data


def _photo_paths() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in PHOTOS if (data / name).is_file()]


def _write_jpegs(job: tuple) -> None:
    """Random crops (4:3, 40-100 % of the photo), flips and exposures, so no two files match."""
    import numpy as np
    from PIL import Image, ImageOps

    photo_path, targets, size, seed = job
    rng = np.random.default_rng(seed)
    photo = Image.open(photo_path).convert("RGB")
    w, h = photo.size
    for target in targets:
        cw = int(rng.uniform(0.4, 1.0) * min(w, h * 4 / 3))
        ch = int(cw * 3 / 4)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        pixels = np.asarray(crop, np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)


def _pixels_224(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR))


def make_data(root: Path, sizes: Sizes) -> dict:
    """``all/`` (the JPEG folder), ``train/<cat|coffee>/`` and ``arrays.npy`` (N x 224² x 3)."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    photos = _photo_paths()
    if not photos:
        raise RuntimeError("scikit-image's sample photos are missing")
    jobs = []
    folder = root / "all"
    folder.mkdir(parents=True)
    chunk = max(1, sizes.jpegs // (4 * len(photos)))
    names = [folder / f"{i:05d}.jpg" for i in range(sizes.jpegs)]
    for k, start in enumerate(range(0, len(names), chunk)):
        jobs.append((photos[k % len(photos)], names[start : start + chunk], sizes.jpeg_size, k))
    train = root / "train"
    per_class = sizes.train_images // 2
    for c, (label, photo) in enumerate((("cat", "chelsea.png"), ("coffee", "coffee.png"))):
        (train / label).mkdir(parents=True)
        targets = [train / label / f"{i:04d}.jpg" for i in range(per_class)]
        path = photos[0].parent / photo
        for k, start in enumerate(range(0, per_class, 50)):
            jobs.append((path, targets[start : start + 50], sizes.jpeg_size, 1000 + 100 * c + k))
    sources = [names[i % len(names)] for i in range(sizes.arrays)]
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_jpegs, jobs))
        arrays = np.stack(list(pool.map(_pixels_224, sources, chunksize=64)))
    np.save(root / "arrays.npy", arrays)
    return {"folder": str(folder), "train": str(train), "arrays": str(root / "arrays.npy"),
            "files": [str(p) for p in names]}  # fmt: skip


# ------------------------------------------------------------------------- kerascope side


class KerascopeSide:
    """kerascope as a user calls it, in this (worker) process; every op returns a dict."""

    def __init__(self, tmp: str):
        start = time.perf_counter()
        import kerascope  # noqa: F401
        from kerascope.config import ensure_backend

        ensure_backend()
        self.import_s = time.perf_counter() - start
        self.tmp = Path(tmp)
        self.classifiers: dict = {}
        self.forwards: dict = {}
        self.warm: set = set()
        self.arrays = None

    def info(self) -> dict:
        import jax
        import keras

        import kerascope
        from kerascope.cam.save import save_explanations
        from kerascope.inference import compiled
        from kerascope.zoo.models import load_model

        return {"value": {
            "keras": keras.__version__, "jax": jax.__version__,
            "backend": keras.backend.backend(), "devices": [str(d) for d in jax.devices()],
            "import_s": round(self.import_s, 2),
            "precision_option": {
                "compiled": accepts(compiled, "precision"),
                "load_model": accepts(load_model, "precision"),
                "classify": accepts(kerascope.classify, "precision"),
                "save_explanations": accepts(save_explanations, "precision"),
            },
            "classify_batch_size": default_of(kerascope.classify, "batch_size", None),
            "explain_batch_size": default_of(save_explanations, "batch_size", None),
        }}  # fmt: skip

    def _classifier(self, name: str, precision: str | None = None):
        """A zoo model by name: Lite0 with its packaged ImageNet weights, ResNet-50 with random
        weights from a file (no download on an offline machine; speed does not depend on them)."""
        key = (name, precision)
        if key not in self.classifiers:
            from kerascope.zoo.models import load_model

            kw = {"precision": precision} if precision else {}
            weights = None
            if name != "efficientnet_lite0":
                weights = self.tmp / f"{name}-random.weights.h5"
                if not weights.exists():
                    from kerascope.zoo.models import build

                    try:
                        from kerascope.zoo.fast_init import numpy_init
                    except ImportError:  # moved: Keras's own initializers then
                        import contextlib

                        numpy_init = contextlib.nullcontext
                    with numpy_init():
                        build(name, weights=None).save_weights(str(weights))
            self.classifiers[key] = load_model(name, weights=weights, **kw)
        return self.classifiers[key]

    def forward(self, model: str, precision: str, batch: int, steps: int) -> dict:
        """img/s of the compiled forward on uint8 host batches, probabilities back on the host."""
        import numpy as np

        from kerascope.inference import compiled
        from kerascope.zoo.models import load_model

        key = (model, precision, batch)
        info: dict = {}
        if key not in self.forwards:
            if accepts(compiled, "precision"):
                clf = self._classifier(model)
                fwd = compiled(clf.model, precision=precision)
                route = "inference.compiled(model, precision=)"
            elif accepts(load_model, "precision"):
                clf = self._classifier(model, precision)
                fwd = compiled(clf.model)
                route = "load_model(precision=) + inference.compiled"
            elif precision == "float32":
                clf = self._classifier(model)
                fwd = compiled(clf.model)
                route = "inference.compiled (no precision option: float32)"
            else:
                raise NotAvailable("no precision option in load_model or inference.compiled")
            size = clf.input_size
            rng = np.random.default_rng(0)
            xs = [rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8) for _ in range(3)]
            start = time.perf_counter()
            fwd(xs[0])
            info["first_call_s"] = round(time.perf_counter() - start, 2)
            fwd(xs[1])
            self.forwards[key] = (fwd, xs, route)
        fwd, xs, route = self.forwards[key]
        start = time.perf_counter()
        for i in range(steps):
            out = fwd(xs[i % len(xs)])
        np.asarray(out)
        rate = batch * steps / (time.perf_counter() - start)
        info.update(route=route, engine=getattr(fwd, "engine", "?"),
                    precision=str(getattr(fwd, "precision", precision)))  # fmt: skip
        return {"value": rate, "info": info}

    def _arrays(self, path: str):
        import numpy as np

        if self.arrays is None:
            self.arrays = np.load(path)
        return self.arrays

    def _timed_classify(self, inputs, n: int, **kw) -> tuple[float, list]:
        import kerascope

        start = time.perf_counter()
        results = kerascope.classify(inputs, **kw)
        seconds = time.perf_counter() - start
        bad = [r for r in results if not r.ok]
        if len(results) != n or bad:
            raise RuntimeError(f"classify gave {len(results)} results for {n} inputs, "
                               f"{len(bad)} failed: {bad[:1]}")  # fmt: skip
        return seconds, results

    def classify_arrays(self, path: str, batch: int = CLASSIFY_BATCH) -> dict:
        arrays = self._arrays(path)
        info = {"batch_size": batch}
        if "arrays" not in self.warm:
            first = self._timed_classify(arrays, len(arrays), batch_size=batch)[0]
            info["first_call_s"] = round(first, 2)
            self.warm.add("arrays")
        seconds, _ = self._timed_classify(arrays, len(arrays), batch_size=batch)
        return {"value": len(arrays) / seconds, "info": info}

    def classify_folder(self, folder: str, n: int, batch: int = CLASSIFY_BATCH) -> dict:
        info = {"batch_size": batch}
        if "folder" not in self.warm:
            info["first_call_s"] = round(self._timed_classify(folder, n, batch_size=batch)[0], 2)
            self.warm.add("folder")
        seconds, _ = self._timed_classify(folder, n, batch_size=batch)
        return {"value": n / seconds, "info": info}

    def first_call_folder(self, folder: str, n: int) -> dict:
        """In a fresh process: the user's first ``classify(folder)`` (model load, compile)."""
        seconds, _ = self._timed_classify(folder, n, batch_size=CLASSIFY_BATCH)
        return {"value": n / seconds, "info": {"seconds": round(seconds, 2),
                                               "import_s": round(self.import_s, 2)}}  # fmt: skip

    def compile_shapes(self, path: str, new_batch: int, remainder: int) -> dict:
        """Seconds the first call on a new shape costs over the same call again: a batch size
        not used before, and a job whose last batch is partial (default batch size)."""
        import kerascope

        arrays = self._arrays(path)
        first, _ = self._timed_classify(arrays[:new_batch], new_batch, batch_size=new_batch)
        again, _ = self._timed_classify(arrays[:new_batch], new_batch, batch_size=new_batch)
        bs = default_of(kerascope.classify, "batch_size", 32)
        full = max(1, len(arrays) // bs - 1) * bs
        total = min(len(arrays), full + min(remainder, bs - 1)) if bs > 1 else len(arrays)
        p_first, _ = self._timed_classify(arrays[:total], total)
        p_again, _ = self._timed_classify(arrays[:total], total)
        return {"value": {"new_shape": first - again, "partial": p_first - p_again},
                "info": {"new_batch": new_batch, "partial_job": total, "batch_size": bs,
                         "last_batch": total % bs, "new_first_s": round(first, 2),
                         "new_again_s": round(again, 2), "partial_first_s": round(p_first, 2),
                         "partial_again_s": round(p_again, 2)}}  # fmt: skip

    def explain(self, files: list[str], warm_files: int) -> dict:
        """Grad-CAM pictures written (original | overlay JPEGs), as `kerascope explain` does."""
        from kerascope.cam.save import save_explanations

        clf = self._classifier("efficientnet_lite0")
        info = {}
        if "explain" not in self.warm:
            out = Path(tempfile.mkdtemp(dir=self.tmp))
            start = time.perf_counter()
            save_explanations(
                files[:warm_files],
                output_dir=out,
                model=clf,
                method="gradcam",
                batch_size=EXPLAIN_BATCH,
            )
            info["warm_up_s"] = round(time.perf_counter() - start, 2)
            shutil.rmtree(out, ignore_errors=True)
            self.warm.add("explain")
        out = Path(tempfile.mkdtemp(dir=self.tmp))
        start = time.perf_counter()
        saved = save_explanations(
            files, output_dir=out, model=clf, method="gradcam", batch_size=EXPLAIN_BATCH
        )
        seconds = time.perf_counter() - start
        written = sum(1 for _ in out.rglob("*.jpg"))
        shutil.rmtree(out, ignore_errors=True)
        if written != len(files) or sum(1 for s in saved if not s.ok):
            raise RuntimeError(f"explain wrote {written} pictures for {len(files)} files")
        info["pictures"] = written
        return {"value": len(files) / seconds, "info": info}


# ------------------------------------------------------------------------------ peer side


class PeerSide:
    """What a PyTorch user writes: timm eager models, torch DataLoader, torchvision transforms."""

    def __init__(self, tmp: str, workers: int):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.dev = "cuda" if self.cuda else "cpu"
        torch.backends.cudnn.benchmark = True
        self.tmp = Path(tmp)
        self.workers = max(1, min(workers, os.cpu_count() or 1))
        self.models: dict = {}
        self.forwards: dict = {}
        self.warm: set = set()
        self.train_state: dict = {}
        self.arrays = None

    def info(self) -> dict:
        torch = self.torch
        info = {"torch": torch.__version__, "timm": _timm().__version__, "device": self.dev,
                "dataloader_workers": self.workers}  # fmt: skip
        if self.cuda:
            info["gpu"] = torch.cuda.get_device_name(0)
        try:
            import torchvision

            info["torchvision"] = torchvision.__version__
        except ImportError:
            info["torchvision"] = None
        return {"value": info}

    def _bf16(self, precision: str) -> bool:
        if precision == "bfloat16" and not self.cuda:
            raise NotAvailable("the bf16 peer runs on CUDA only (CPU autocast is no GPU peer)")
        return precision == "bfloat16"

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _model(self, name: str, classes: int = 1000):
        if (name, classes) not in self.models:
            m = _timm().create_model(name, pretrained=False, num_classes=classes)
            m = m.to(self.dev).eval().to(memory_format=self.torch.channels_last)
            self.models[(name, classes)] = m
        return self.models[(name, classes)]

    def _prep(self, xb):
        """uint8 NHWC host batch -> normalised NCHW float on the device."""
        x = xb.to(self.dev, non_blocking=True).permute(0, 3, 1, 2).float()
        return x.sub_(127.0).div_(128.0).contiguous(memory_format=self.torch.channels_last)

    def _probs(self, m, xb, bf16: bool):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.dev, torch.bfloat16, enabled=bf16):
            return m(self._prep(xb)).float().softmax(1)

    def forward(self, model: str, precision: str, batch: int, steps: int) -> dict:
        """img/s from uint8 host batches, probabilities back on the host (like for like), and
        with the batch already on the device (info)."""
        torch = self.torch
        bf16 = self._bf16(precision)
        m = self._model(model)
        key = (model, batch)
        if key not in self.forwards:
            xs = [torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8) for _ in range(3)]
            self.forwards[key] = [x.pin_memory() for x in xs] if self.cuda else xs
        xs = self.forwards[key]
        if (key, bf16) not in self.warm:
            for x in xs[:2]:
                self._probs(m, x, bf16).cpu()
            self.warm.add((key, bf16))
        start = time.perf_counter()
        for i in range(steps):
            out = self._probs(m, xs[i % len(xs)], bf16).cpu()
        del out
        host = batch * steps / (time.perf_counter() - start)
        xd = xs[0].to(self.dev)
        self._probs(m, xd, bf16)
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self._probs(m, xd, bf16)
        self._sync()
        device = batch * steps / (time.perf_counter() - start)
        return {"value": host, "info": {"device_resident_img_s": round(device, 1)}}

    def _arrays(self, path: str):
        import numpy as np

        if self.arrays is None:
            self.arrays = np.load(path)
        return self.arrays

    def _classify_batches(self, batches, m, k: int = 5) -> list:
        """Top-k (index, probability) per image, as Python lists: the user's results."""
        results = []
        for xb in batches:
            p = self._probs(m, xb, False)
            top = p.topk(k, dim=1)
            for idx, prob in zip(top.indices.cpu().tolist(), top.values.cpu().tolist(),
                                 strict=True):  # fmt: skip
                results.append(list(zip(idx, prob, strict=True)))
        return results

    def classify_arrays(self, path: str, batch: int = 256) -> dict:
        torch = self.torch
        arrays = self._arrays(path)
        m = self._model("efficientnet_lite0")

        def run() -> float:
            start = time.perf_counter()
            batches = (
                torch.from_numpy(arrays[i : i + batch]) for i in range(0, len(arrays), batch)
            )
            n = len(self._classify_batches(batches, m))
            assert n == len(arrays)
            return time.perf_counter() - start

        info = {}
        if "arrays" not in self.warm:
            info["first_call_s"] = round(run(), 2)
            self.warm.add("arrays")
        return {"value": len(arrays) / run(), "info": info}

    def _loader(self, files: list[str], batch: int, **kw):
        torch = self.torch
        return torch.utils.data.DataLoader(_Decoded(files), batch_size=batch,
                                           num_workers=self.workers, pin_memory=self.cuda,
                                           **kw)  # fmt: skip

    def _folder_pass(self, folder: str, n: int, batch: int = 256) -> float:
        """Seconds of one pass: a new DataLoader (PIL draft decode + resize 224 in the worker
        processes) into timm Lite0 fp32, top-5 back as Python lists: what a user writes."""
        files = sorted(str(p) for p in Path(folder).iterdir())
        start = time.perf_counter()
        m = self._model("efficientnet_lite0")
        got = len(self._classify_batches((xb for xb, _ in self._loader(files, batch)), m))
        assert got == n == len(files), (got, n, len(files))
        return time.perf_counter() - start

    def classify_folder(self, folder: str, n: int) -> dict:
        info = {}
        if "folder" not in self.warm:
            info["first_call_s"] = round(self._folder_pass(folder, n), 2)
            self.warm.add("folder")
        return {"value": n / self._folder_pass(folder, n), "info": info}

    def first_call_folder(self, folder: str, n: int) -> dict:
        """In a fresh process: the first pass (model creation and CUDA start included)."""
        seconds = self._folder_pass(folder, n)
        return {"value": n / seconds, "info": {"seconds": round(seconds, 2)}}

    def compile_shapes(self, path: str, new_batch: int, remainder: int) -> dict:
        """First call on a new batch shape over the same call again (eager: cuDNN autotuning)."""
        torch = self.torch
        arrays = self._arrays(path)
        m = self._model("efficientnet_lite0")

        def once(n: int) -> float:
            start = time.perf_counter()
            self._classify_batches([torch.from_numpy(arrays[:n])], m)
            return time.perf_counter() - start

        new = once(new_batch) - once(new_batch)
        part = once(remainder) - once(remainder)
        return {"value": {"new_shape": new, "partial": part}, "info": {}}

    def explain(self, files: list[str], warm_files: int, batch: int = 64) -> dict:
        """Grad-CAM on the device (forward + gradient at the last conv block, upsampled to
        224), pictures (original | overlay at the file's size) written by a thread pool."""
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np
        import torch.nn.functional as F

        torch = self.torch
        m = self._model("efficientnet_lite0")
        feats: dict = {}
        hook = m.bn2.register_forward_hook(lambda mod, inp, out: feats.__setitem__("a", out))
        lut = _viridis()

        def run(paths: list[str]) -> float:
            out = Path(tempfile.mkdtemp(dir=self.tmp))
            start = time.perf_counter()
            with ThreadPoolExecutor(self.workers) as pool:
                jobs = []
                for xb, idx in self._loader(paths, batch):
                    x = self._prep(xb)
                    with torch.enable_grad():
                        logits = m(x)
                        a = feats["a"]
                        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                        (g,) = torch.autograd.grad(score, a)
                    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
                    cam = F.interpolate(cam, size=(224, 224), mode="bilinear")
                    lo = cam.amin((2, 3), keepdim=True)
                    hi = cam.amax((2, 3), keepdim=True)
                    cam = ((cam - lo) / (hi - lo + 1e-7) * 255).to(torch.uint8)[:, 0].cpu().numpy()
                    for i, c in zip(idx.tolist(), cam, strict=True):
                        jobs.append(
                            pool.submit(
                                _write_overlay,
                                paths[i],
                                c,
                                lut,
                                out / f"{Path(paths[i]).stem}-output.jpg",
                            )
                        )
                for j in jobs:
                    j.result()
            seconds = time.perf_counter() - start
            written = sum(1 for _ in out.glob("*.jpg"))
            shutil.rmtree(out, ignore_errors=True)
            assert written == len(paths), (written, len(paths))
            return seconds

        try:
            info = {}
            if "explain" not in self.warm:
                info["warm_up_s"] = round(run(files[:warm_files]), 2)
                self.warm.add("explain")
            rate = len(files) / run(files)
        finally:
            hook.remove()
        _ = np
        return {"value": rate, "info": info}

    def train_folder(
        self, folder: str, precision: str, epochs: int, batch: int, image_size: int = 224
    ) -> dict:
        """timm Lite0 fine-tuned whole, Adam, from ImageFolder + torchvision augmentation in a
        16-worker DataLoader (persistent workers), as peer_gpu_pipeline.py's last peer."""
        torch = self.torch
        bf16 = self._bf16(precision)
        try:
            import torchvision.transforms as T
            from torchvision.datasets import ImageFolder
        except ImportError as exc:
            raise NotAvailable("torchvision is not installed") from exc
        if "loader" not in self.train_state:
            tf = T.Compose(
                [
                    T.RandomAffine(40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=11),
                    T.Resize((image_size, image_size)),
                    T.RandomHorizontalFlip(),
                    T.PILToTensor(),
                ]
            )
            ds = ImageFolder(folder, transform=tf)
            self.train_state["classes"] = len(ds.classes)
            self.train_state["loader"] = torch.utils.data.DataLoader(
                ds, batch_size=batch, shuffle=True, num_workers=self.workers,
                pin_memory=self.cuda, drop_last=True, persistent_workers=True)  # fmt: skip
        dl = self.train_state["loader"]
        if precision not in self.train_state:
            m = _timm().create_model("efficientnet_lite0", pretrained=False,
                                  num_classes=self.train_state["classes"])  # fmt: skip
            m = m.to(self.dev).train().to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(m.parameters(), 1e-4)
            self.train_state[precision] = (m, opt)
        m, opt = self.train_state[precision]
        lf = torch.nn.CrossEntropyLoss()
        rates = []
        for _ in range(epochs):
            start, n = time.perf_counter(), 0
            for xb, yb in dl:
                x = xb.to(self.dev, non_blocking=True).float().div_(255)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.dev, torch.bfloat16, enabled=bf16):
                    loss = lf(m(x), yb.to(self.dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(xb)
            self._sync()
            rates.append(n / (time.perf_counter() - start))
        return {"value": rates, "info": {"batch": batch, "images_per_epoch": n}}


def _timm():
    """timm, or n/a where it cannot be imported (it needs torchvision, absent on some CPUs)."""
    try:
        import timm
    except ImportError as exc:
        raise NotAvailable(f"timm cannot be imported here ({exc})") from exc
    return timm


class _Decoded:
    """A torch Dataset of files decoded as the anchor does (PIL draft, RGB, bilinear 224)."""

    def __init__(self, files: list[str]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        im = Image.open(self.files[i])
        im.draft("RGB", (224, 224))
        im = im.convert("RGB").resize((224, 224), Image.BILINEAR)
        return torch.from_numpy(np.asarray(im).copy()), i


def _viridis():
    import matplotlib
    import numpy as np

    return (matplotlib.colormaps["viridis"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _write_overlay(path: str, cam, lut, target: Path) -> None:
    """original | 40 % heatmap overlay, side by side, at the file's own size (JPEG q90)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    heat = np.asarray(Image.fromarray(cam).resize(image.size, Image.BILINEAR))
    pixels = np.asarray(image, np.float32)
    mixed = (pixels * 0.6 + lut[heat].astype(np.float32) * 0.4).astype(np.uint8)
    both = np.concatenate([np.asarray(image), mixed], axis=1)
    Image.fromarray(both).save(target, quality=90)


# -------------------------------------------------------------------------------- workers


def worker_main(kind: str, tmp: str, workers: int) -> None:
    """Answer one JSON request per line on stdin; anything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        side = KerascopeSide(tmp) if kind == "kerascope" else PeerSide(tmp, workers)
        proto.write(json.dumps({"ok": True, "value": "ready"}) + "\n")
    except Exception:
        proto.write(json.dumps({"ok": False, "error": traceback.format_exc()[-1500:]}) + "\n")
        return
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, **getattr(side, request["op"])(**request["args"])}
        except NotAvailable as exc:
            reply = {"ok": False, "na": str(exc)}
        except Exception:
            traceback.print_exc()
            reply = {"ok": False, "error": traceback.format_exc()[-1500:]}
        proto.write(json.dumps(reply, default=str) + "\n")


class Worker:
    """A worker process (``--worker kerascope|peer``) asked one op at a time, with a timeout;
    on a timeout it is killed and the next call starts a new one."""

    def __init__(self, kind: str, env: dict, tmp: str, workers: int, log):
        self.kind, self.env, self.tmp, self.workers, self.log = kind, env, tmp, workers, log
        self.proc = None
        self.lines: queue.Queue = queue.Queue()

    def _start(self, timeout: float) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", self.kind,
               "--tmp", self.tmp, "--workers", str(self.workers)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=self.env, text=True,
                                     start_new_session=True)  # fmt: skip
        self.lines = queue.Queue()
        proc, lines = self.proc, self.lines
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                         daemon=True).start()  # fmt: skip
        reply = self._read(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.kind} worker did not start: {reply.get('error')}")

    def _read(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=max(1.0, timeout))
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{self.kind}: no answer within {timeout:.0f} s") from None
        if line is None:
            code = self.proc.wait() if self.proc else None
            self.proc = None
            raise RuntimeError(f"{self.kind} worker exited (code {code}); see the log")
        return json.loads(line)

    def call(self, op: str, timeout: float, **args) -> dict:
        deadline = time.monotonic() + timeout
        if self.proc is None:
            self._start(timeout)
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self._read(deadline - time.monotonic())

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------------------- the rows


@dataclass
class Row:
    key: str
    label: str
    unit: str  # "img/s" (higher is better) or "s" (lower is better)
    target: str = ""
    kerascope: list | None = None
    peer: list | None = None
    k_note: str = ""
    p_note: str = ""
    k_info: dict | None = None
    p_info: dict | None = None

    def add(self, side: str, reply: dict) -> None:
        """Record one reply: a value, or why there is none (n/a, error, timeout)."""
        values = getattr(self, side)
        if values is None:
            values = []
            setattr(self, side, values)
        if reply.get("ok"):
            value = reply["value"]
            values.extend(value if isinstance(value, list) else [value])
            if reply.get("warning"):
                setattr(self, side[0] + "_note", reply["warning"])
            info = reply.get("info") or {}
            if info:
                merged = getattr(self, side[0] + "_info") or {}
                merged.update(info)
                setattr(self, side[0] + "_info", merged)
        else:
            note = ("n/a: " + reply["na"]) if "na" in reply else reply.get("error", "failed")
            setattr(self, side[0] + "_note", note.strip().splitlines()[-1][:160])


def ask(worker: Worker, op: str, timeout: float, **args) -> dict:
    """One call, any failure turned into a reply the row records."""
    if timeout < 1:
        return {"ok": False, "error": "skipped: out of time"}
    try:
        return worker.call(op, timeout, **args)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def summary(values: list | None) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}  # fmt: skip


def fmt(values: list | None, note: str, unit: str) -> str:
    """``median [min-max]`` of a row's values, or the note saying why there are none."""
    if not values:
        return note or "-"
    med, lo, hi = statistics.median(values), min(values), max(values)
    if unit == "s":
        return f"{med:.2f} s" if len(values) == 1 else f"{med:.2f} [{lo:.2f}-{hi:.2f}] s"
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} [{lo:,.0f}-{hi:,.0f}]"


def cell(values: list | None, note: str, unit: str, notes: list[str]) -> str:
    """A table cell: the figure, or a short tag pointing to a numbered note under the table."""
    if not note:
        return fmt(values, "", unit) if values else "-"
    if note not in notes:
        notes.append(note)
    tag = "n/a" if note.startswith("n/a") else "skipped" if "skipped" in note else "failed"
    if values:  # a figure with a caveat
        tag = fmt(values, "", unit)
    return f"{tag} [{notes.index(note) + 1}]"


def ratio(row: Row) -> str:
    if not row.kerascope or not row.peer or row.unit != "img/s":
        return ""
    return f"{statistics.median(row.kerascope) / statistics.median(row.peer):.2f}x"


class Clock:
    """The script's deadline and each group's budget within it."""

    def __init__(self, total: float):
        self.end = time.monotonic() + total

    def left(self) -> float:
        return self.end - time.monotonic()

    def group(self, seconds: float) -> float:
        """The deadline of a group that may take ``seconds`` (never past the script's)."""
        return min(self.end, time.monotonic() + seconds)


# ----------------------------------------------------------------------------- train CLI

EPOCH = re.compile(r"epoch (\d+):.*?([\d.]+) img/s\s+([\d.]+) s")
STAGE = re.compile(r"^stage (\d+)/(\d+)")


def train_help(env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "kerascope", "train", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.stdout + out.stderr


def run_train(data: str, run_dir: Path, recipe: str, epochs: str, precision: str | None,
              sizes: Sizes, help_text: str, env: dict, timeout: float, log) -> dict:  # fmt: skip
    """One `kerascope train` in a subprocess; per stage, the img/s of each epoch it printed
    (kept when the run is stopped at its timeout)."""
    cmd = [sys.executable, "-m", "kerascope", "train", data, "--recipe", recipe, "-o",
           str(run_dir), "--epochs", epochs, "--batch-size", str(sizes.train_batch),
           "--image-size", str(sizes.image_size), "--seed", "0"]  # fmt: skip
    if "--patience" in help_text:
        cmd += ["--patience", "1000"]  # steady epochs, not early stopping
    if precision is not None:
        if "--precision" in help_text:
            cmd += ["--precision", precision]
        elif precision != "float32":
            return {"ok": False, "na": "no --precision option in `kerascope train`"}
    if timeout < 5:
        return {"ok": False, "error": "skipped: out of time"}
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, start_new_session=True)  # fmt: skip
    epochs_seen: list[tuple[int, int, float, float]] = []
    tail: list[str] = []

    def read() -> None:
        stage = 1
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            del tail[:-5]
            if m := STAGE.search(line.strip()):
                stage = int(m[1])
            elif m := EPOCH.search(line):
                epochs_seen.append((stage, int(m[1]), float(m[2]), float(m[3])))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    reader.join(5)
    log.flush()
    wall = time.monotonic() - start
    want = 2 if recipe == "finetune" else 1
    stage_epochs = [e for e in epochs_seen if e[0] == want]
    steady = [rate for _, epoch, rate, _ in stage_epochs[1:]] or [r for *_, r, _ in stage_epochs]
    info = {
        "cmd": " ".join(cmd[1:]),
        "wall_s": round(wall, 1),
        "timed_out": timed_out,
        "exit": code,
        "epochs": epochs_seen,
        "steady_from": "epoch 2 of the stage" if len(stage_epochs) > 1 else "epoch 1 only",
    }
    if not steady:
        why = f"timed out after {wall:.0f} s" if timed_out else f"exit {code}"
        return {"ok": False, "error": f"no epoch of stage {want} ({why}): {' | '.join(tail)}",
                "info": info}  # fmt: skip
    reply = {"ok": True, "value": steady, "info": info}
    if len(stage_epochs) == 1:
        reply["warning"] = (
            f"only epoch 1 of stage {want} ran in {timeout:.0f} s: it includes compiling"
        )
    return reply


def write_report(out: Path, meta: dict, rows: list[Row], workers: int, started: float) -> str:
    """Write gpu.txt (the table) and gpu.json; called after every group, so a run stopped
    from outside still leaves what it measured."""
    peer_meta = meta.get("peer") if isinstance(meta.get("peer"), dict) else {}
    device = peer_meta.get("gpu") or peer_meta.get("device") or "?"
    lines = [f"kerascope {meta.get('commit') or '(no git)'} beside a timm/PyTorch peer on "
             f"{device}, {os.cpu_count()} CPUs; median [min-max] over repeats",
             "", f"{'work':<50} {'kerascope':>24} {'peer':>24} {'ratio':>6}  target"]  # fmt: skip
    notes: list[str] = []
    for row in rows:
        k = cell(row.kerascope, row.k_note, row.unit, notes)
        p = cell(row.peer, row.p_note, row.unit, notes)
        lines.append(f"{row.label:<50} {k:>24} {p:>24} {ratio(row):>6}  {row.target}")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    lines.append(
        "kerascope: public API in one worker process (default precision unless the row names "
        "one), `kerascope train` CLI runs; peer: timm eager (classify and explain fp32, as "
        f"peer_gpu_pipeline.py), {workers}-worker DataLoader, training = whole fine-tune with "
        "torchvision augmentation"
    )
    total = round(time.monotonic() - started, 1)
    lines.append(f"(after {total:.0f} s; details in gpu.json and gpu.log)")
    table = "\n".join(lines)
    (out / "gpu.txt").write_text(table + "\n")
    result = {"meta": meta, "total_s": total, "rows": [
        {"key": r.key, "label": r.label, "unit": r.unit, "target": r.target,
         "kerascope": summary(r.kerascope), "peer": summary(r.peer), "ratio": ratio(r),
         "kerascope_note": r.k_note, "peer_note": r.p_note, "kerascope_info": r.k_info,
         "peer_info": r.p_info} for r in rows]}  # fmt: skip
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    return table


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="folder for gpu.json, gpu.txt and gpu.log (default: $OUT)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups: forward, arrays, "
        "folder, compile, explain, first, train (default: all)",
    )
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--worker", choices=("kerascope", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.tmp, args.workers)
        return
    sizes = QUICK if args.quick else Sizes()
    if args.budget:
        sizes.budget = args.budget
    if args.repeats:
        sizes.repeats = args.repeats
    clock = Clock(sizes.budget)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    groups = dict(sizes.budgets)
    only = [g for g in args.only.split(",") if g] or list(groups)
    tmp = Path(tempfile.mkdtemp(prefix="kerascope-gpu-"))
    log = open(out / "gpu.log", "w", buffering=1)  # noqa: SIM115
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH"))
                                        if p)  # fmt: skip
    env.setdefault("KERAS_BACKEND", "jax")
    env["KERASCOPE_HOME"] = str(tmp / "kerascope-home")  # weights port, decode cache, XLA cache
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # JAX beside the torch peer
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("PYTHONUNBUFFERED", "1")
    workers = min(sizes.workers, os.cpu_count() or 1)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    say(f"data in {tmp}, output in {out}, budget {sizes.budget:.0f} s, groups {','.join(only)}")
    data = make_data(tmp / "data", sizes)
    say(f"made {sizes.jpegs} JPEGs {sizes.jpeg_size[0]}x{sizes.jpeg_size[1]}, "
        f"{sizes.train_images} training photos, {sizes.arrays} arrays")  # fmt: skip
    K = Worker("kerascope", env, str(tmp), workers, log)
    P = Worker("peer", env, str(tmp), workers, log)
    atexit.register(P.close)  # also when this process fails or is interrupted
    atexit.register(K.close)
    meta: dict = {
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "argv": sys.argv[1:],
        "env": {k: v for k, v in env.items() if k.startswith(("XLA_", "JAX_", "KERAS"))},
    }
    try:
        meta["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        meta["commit"] = None
    for name, w in (("kerascope", K), ("peer", P)):
        reply = ask(w, "info", 120)
        meta[name] = reply.get("value") if reply.get("ok") else reply
        say(f"{name}: {meta[name]}")
    rows: list[Row] = []
    n_files = sizes.jpegs
    R = sizes.repeats

    def group(name: str) -> float | None:
        if name not in only:
            return None
        return clock.group(groups[name])

    def left(deadline: float) -> float:
        return deadline - time.monotonic()

    def interleave(row: Row, deadline: float, k_op: tuple, p_op: tuple) -> None:
        for rep in range(R):
            for side, w, (op, kw) in (("kerascope", K, k_op), ("peer", P, p_op)):
                if rep and getattr(row, side[0] + "_note"):
                    continue  # failed or n/a on an earlier repeat
                row.add(side, ask(w, op, left(deadline), **kw))
            say(f"  {row.label} #{rep + 1}: kerascope {fmt(row.kerascope, row.k_note, row.unit)}"
                f" | peer {fmt(row.peer, row.p_note, row.unit)}")  # fmt: skip
            if left(deadline) < 2:
                break

    # --- model forward
    if (deadline := group("forward")) is not None:
        say("model forward, uint8 batches from the host, probabilities back")
        configs = [(m, p) for m in ("efficientnet_lite0", "resnet50")
                   for p in ("float32", "bfloat16")]  # fmt: skip
        label = {"efficientnet_lite0": "Lite0", "resnet50": "ResNet-50"}
        frows = {}
        for m, p in configs:
            target = "bf16 >= 1.0x timm bf16" if p == "bfloat16" else ""
            frows[(m, p)] = Row(f"forward_{m}_{p}", f"forward {label[m]} {p} bs{sizes.batch}",
                                "img/s", target)  # fmt: skip
            rows.append(frows[(m, p)])
        for rep in range(R):
            for (m, p), row in frows.items():
                kw = {"model": m, "precision": p, "batch": sizes.batch, "steps": sizes.steps}
                for side, w in (("kerascope", K), ("peer", P)):
                    if rep and getattr(row, side[0] + "_note"):
                        continue
                    row.add(side, ask(w, "forward", left(deadline), **kw))
                say(f"  {row.label} #{rep + 1}: kerascope "
                    f"{fmt(row.kerascope, row.k_note, 'img/s')} | peer "
                    f"{fmt(row.peer, row.p_note, 'img/s')}")  # fmt: skip
            if left(deadline) < 5:
                break

    write_report(out, meta, rows, workers, started)

    # --- classify of in-memory arrays
    if (deadline := group("arrays")) is not None:
        row = Row("classify_arrays", f"classify {sizes.arrays} arrays 224²", "img/s",
                  ">= 8,000 img/s")  # fmt: skip
        rows.append(row)
        interleave(row, deadline, ("classify_arrays", {"path": data["arrays"]}),
                   ("classify_arrays", {"path": data["arrays"]}))  # fmt: skip

    write_report(out, meta, rows, workers, started)

    # --- classify of the JPEG folder, warm
    if (deadline := group("folder")) is not None:
        row = Row("classify_folder", f"classify folder {n_files} JPEGs (warm)", "img/s",
                  ">= 1.0x peer")  # fmt: skip
        rows.append(row)
        kw = {"folder": data["folder"], "n": n_files}
        interleave(row, deadline, ("classify_folder", kw), ("classify_folder", kw))

    write_report(out, meta, rows, workers, started)

    # --- compile: first call on a new batch shape, and on the last partial batch
    if (deadline := group("compile")) is not None:
        new = Row("compile_new_shape", "first call, new batch shape (extra s)", "s", "~0")
        part = Row("compile_partial", "first call, last partial batch (extra s)", "s", "~0")
        rows += [new, part]
        kw = {"path": data["arrays"], "new_batch": max(2, min(sizes.arrays, 200)),
              "remainder": 13}  # fmt: skip
        for side, w in (("kerascope", K), ("peer", P)):
            reply = ask(w, "compile_shapes", left(deadline), **kw)
            for row, key in ((new, "new_shape"), (part, "partial")):
                one = dict(reply, value=reply["value"][key]) if reply.get("ok") else reply
                row.add(side, one)
        say(
            f"  new shape: kerascope {fmt(new.kerascope, new.k_note, 's')} | peer "
            f"{fmt(new.peer, new.p_note, 's')}; partial: kerascope "
            f"{fmt(part.kerascope, part.k_note, 's')} | peer {fmt(part.peer, part.p_note, 's')}"
        )

    write_report(out, meta, rows, workers, started)

    # --- explain, Grad-CAM pictures written
    if (deadline := group("explain")) is not None:
        files = data["files"][: sizes.explain_files]
        row = Row("explain_gradcam", f"explain Grad-CAM {len(files)} files, pictures written",
                  "img/s", ">= 1,000 img/s")  # fmt: skip
        rows.append(row)
        kw = {"files": files, "warm_files": min(len(files), 256)}
        interleave(row, deadline, ("explain", kw), ("explain", kw))
    K.close()  # frees the device for the fresh processes below

    write_report(out, meta, rows, workers, started)

    # --- first call in a fresh process
    if (deadline := group("first")) is not None:
        row = Row("classify_folder_first", f"classify folder {n_files} JPEGs (first call)",
                  "img/s", "slower than warm by <= one compile")  # fmt: skip
        rows.append(row)
        kw = {"folder": data["folder"], "n": n_files}
        for side, kind in (("kerascope", "kerascope"), ("peer", "peer")):
            fresh = Worker(kind, env, str(tmp), workers, log)
            try:
                row.add(side, ask(fresh, "first_call_folder", left(deadline), **kw))
            finally:
                fresh.close()
        say(f"  {row.label}: kerascope {fmt(row.kerascope, row.k_note, 'img/s')} | peer "
            f"{fmt(row.peer, row.p_note, 'img/s')}")  # fmt: skip

    write_report(out, meta, rows, workers, started)

    # --- training: kerascope's CLI runs, the peer's epochs between them
    if (deadline := group("train")) is not None:
        help_text = train_help(env)
        meta["train_precision_option"] = "--precision" in help_text
        runs = [("train_transfer_bf16", "transfer", "bfloat16", ">= 5,000 img/s, >= 2x peer"),
                ("train_transfer_fp32", "transfer", "float32", ""),
                ("train_finetune_stage2", "finetune", "bfloat16", ">= 2,000 img/s")]  # fmt: skip
        if not meta["train_precision_option"]:
            runs = [("train_transfer", "transfer", None, ">= 5,000 img/s, >= 2x peer"),
                    ("train_finetune_stage2", "finetune", None, ">= 2,000 img/s")]  # fmt: skip
        shares = {"train_transfer_bf16": 0.28, "train_transfer_fp32": 0.22,
                  "train_transfer": 0.42, "train_finetune_stage2": 0.38}  # fmt: skip
        if len(runs) == 2:
            shares["train_finetune_stage2"] = 0.48
        tkw = {"folder": data["train"], "batch": sizes.train_batch, "image_size": sizes.image_size}
        warm = ask(P, "train_folder", left(deadline), precision="bfloat16", epochs=1, **tkw)
        meta["peer_train_first_epoch"] = warm.get("value") or warm
        for key, recipe, precision, target in runs:
            shown = precision or "default precision"
            stage = " stage 2" if recipe == "finetune" else ""
            row = Row(key, f"train {recipe}{stage} {shown} (steady epoch)", "img/s", target)
            rows.append(row)
            budget = min(left(deadline) - 8, groups["train"] * shares[key])
            epochs = sizes.finetune_epochs if recipe == "finetune" else str(sizes.transfer_epochs)
            reply = run_train(data["train"], tmp / f"run-{key}", recipe, epochs, precision,
                              sizes, help_text, env, budget, log)  # fmt: skip
            row.add("kerascope", reply)
            if "info" in reply and not reply.get("ok"):
                row.k_info = reply["info"]
            p_prec = "float32" if precision == "float32" else "bfloat16"
            n = sizes.peer_epochs + (1 if p_prec == "float32" else 0)
            peer = ask(P, "train_folder", left(deadline), precision=p_prec, epochs=n, **tkw)
            if peer.get("ok") and p_prec == "float32":
                peer["value"] = peer["value"][1:]  # its first epoch builds the model
            row.add("peer", peer)
            say(f"  {row.label}: kerascope {fmt(row.kerascope, row.k_note, 'img/s')} | peer "
                f"{fmt(row.peer, row.p_note, 'img/s')} (peer: timm whole fine-tune {p_prec}, "
                f"torchvision augmentation, {workers}-worker DataLoader)")  # fmt: skip
            write_report(out, meta, rows, workers, started)
    K.close()
    P.close()

    print("\n" + write_report(out, meta, rows, workers, started), flush=True)
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
