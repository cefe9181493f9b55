"""benchmarks/gpu.py's peer side: what a PyTorch user writes (timm, DataLoader, torchvision)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from _gpu_common import NotAvailable

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
