"""benchmarks/gpu.py's kerascope side: kerascope as a user calls it, in a worker process."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from _gpu_common import CLASSIFY_BATCH, EXPLAIN_BATCH, NotAvailable, accepts, default_of

# ------------------------------------------------------------------------- kerascope side


class KerascopeSide:
    """kerascope as a user calls it, in this (worker) process; every op returns a dict."""

    def __init__(self, tmp: str):
        start = time.perf_counter()
        import kerascope  # noqa: F401
        from kerascope import config

        config.ensure_backend()
        getattr(config, "command_process_settings", lambda: None)()  # as `kerascope` sets them
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

    def _host_only(self):
        """Lite0's input, labels and fitting on a model with no device work
        (`explain_files.host_only`): a job's figure with it is what the host alone allows."""
        if "host-only" not in self.classifiers:
            from explain_files import host_only

            self.classifiers["host-only"] = host_only()
        return self.classifiers["host-only"]

    def classify_folder(
        self, folder: str, n: int, batch: int = CLASSIFY_BATCH, decoder: str = "auto",
        model: str = "lite0",
    ) -> dict:  # fmt: skip
        """``decoder``: KERASCOPE_JPEG_DECODER for this call (auto: simplejpeg if installed);
        ``model`` ``host-only``: `_host_only` instead of the default model."""
        from kerascope.images.jpeg import DECODER_ENV, jpeg_decoder

        os.environ[DECODER_ENV] = decoder
        info = {"batch_size": batch, "decoder": jpeg_decoder(), "model": model}
        kw = {"batch_size": batch, **({"model": self._host_only()} if model == "host-only" else {})}
        try:
            if ("folder", model) not in self.warm:
                first = self._timed_classify(folder, n, **kw)[0]
                info["first_call_s"] = round(first, 2)
                self.warm.add(("folder", model))
            seconds, _ = self._timed_classify(folder, n, **kw)
        finally:
            os.environ[DECODER_ENV] = "auto"
        return {"value": n / seconds, "info": info}

    def first_call_folder(self, folder: str, n: int) -> dict:
        """In a fresh process: the user's first ``classify(folder)`` (model load, compile)."""
        seconds, _ = self._timed_classify(folder, n, batch_size=CLASSIFY_BATCH)
        return {"value": n / seconds, "info": {"seconds": round(seconds, 2),
                                               "import_s": round(self.import_s, 2)}}  # fmt: skip

    def compile_shapes(self, path: str, new_batch: int, remainder: int) -> dict:
        """Seconds the first call on a new shape costs over the same call again: a batch size
        not used before, and a job whose last batch is partial (the warm rows' batch size).
        Every call names the model: the library's shared classifier keeps its compilations."""
        arrays = self._arrays(path)
        first, _ = self._timed_classify(arrays[:new_batch], new_batch, batch_size=new_batch)
        again, _ = self._timed_classify(arrays[:new_batch], new_batch, batch_size=new_batch)
        bs = CLASSIFY_BATCH  # the warm rows' batch: only the last partial batch is new
        full = max(1, len(arrays) // bs - 1) * bs
        total = min(len(arrays), full + min(remainder, bs - 1)) if bs > 1 else len(arrays)
        p_first, _ = self._timed_classify(arrays[:total], total, batch_size=bs)
        p_again, _ = self._timed_classify(arrays[:total], total, batch_size=bs)
        return {"value": {"new_shape": first - again, "partial": p_first - p_again},
                "info": {"new_batch": new_batch, "partial_job": total, "batch_size": bs,
                         "last_batch": total % bs, "new_first_s": round(first, 2),
                         "new_again_s": round(again, 2), "partial_first_s": round(p_first, 2),
                         "partial_again_s": round(p_again, 2)}}  # fmt: skip

    def explain(
        self,
        files: list[str],
        warm_files: int,
        pool: str = "threads",
        model: str = "lite0",
        ahead: bool = True,
    ) -> dict:
        """Grad-CAM pictures written (original | overlay JPEGs), as `kerascope explain` does;
        ``pool``: where the pictures are drawn (threads, or processes); ``model`` ``host-only``:
        `_host_only` instead of Lite0; ``ahead`` False: one batch on the device at a time
        (what dispatching batch i + 1 before copying batch i back gains)."""
        import kerascope.cam.explain as explain_module
        from kerascope.cam.save import save_explanations

        if not ahead and not hasattr(explain_module, "_dispatch_ahead"):
            raise NotAvailable("this version dispatches one batch at a time only")
        clf = self._host_only() if model == "host-only" else self._classifier("efficientnet_lite0")
        info = {"pool": pool, "model": model, "ahead": ahead}
        extra = {"pool": pool} if pool != "threads" else {}
        if ("explain", pool, model) not in self.warm:
            out = Path(tempfile.mkdtemp(dir=self.tmp))
            start = time.perf_counter()
            save_explanations(
                files[:warm_files],
                output_dir=out,
                model=clf,
                method="gradcam",
                batch_size=EXPLAIN_BATCH,
                **extra,
            )
            info["warm_up_s"] = round(time.perf_counter() - start, 2)
            shutil.rmtree(out, ignore_errors=True)
            self.warm.add(("explain", pool, model))
        out = Path(tempfile.mkdtemp(dir=self.tmp))
        dispatch_ahead = getattr(explain_module, "_dispatch_ahead", None)
        if not ahead:
            explain_module._dispatch_ahead = lambda explainer: False
        try:
            start = time.perf_counter()
            saved = save_explanations(
                files, output_dir=out, model=clf, method="gradcam", batch_size=EXPLAIN_BATCH,
                **extra,
            )  # fmt: skip
            seconds = time.perf_counter() - start
        finally:
            if dispatch_ahead is not None:
                explain_module._dispatch_ahead = dispatch_ahead
        written = sum(1 for _ in out.rglob("*.jpg"))
        shutil.rmtree(out, ignore_errors=True)
        if written != len(files) or sum(1 for s in saved if not s.ok):
            raise RuntimeError(f"explain wrote {written} pictures for {len(files)} files")
        info["pictures"] = written
        return {"value": len(files) / seconds, "info": info}
