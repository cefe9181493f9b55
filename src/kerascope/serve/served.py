"""The models a server holds: loaded once at start, each with its own worker thread and batchers.

A model is named on the command line (zoo name, run directory or ``.keras`` file) and known to
clients only by a short key (the zoo name or the run's folder name): requests choose among the
loaded models and never pass a path, so nothing a client sends can make the server open a file.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerascope.errors import KerascopeError
from kerascope.serve.batching import DynamicBatcher
from kerascope.zoo.models import Classifier

METHODS = ("cam", "gradcam", "gradcam++")


class RequestError(KerascopeError):
    """A request the server cannot answer as asked: ``status`` is the 4xx to send."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServedModel:
    """One loaded classifier, its worker thread and its batchers (one per explain method)."""

    key: str
    clf: Classifier
    max_batch: int
    max_wait_ms: float
    executor: ThreadPoolExecutor = field(init=False)
    classifier: DynamicBatcher = field(init=False)
    _explainers: dict[str, DynamicBatcher] = field(default_factory=dict, init=False)
    _cams: dict[str, Any] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        # One thread per model: its passes run one after another, each using every core.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"kerascope-{self.key}")
        self.classifier = DynamicBatcher(
            self._classify, self.executor, self.max_batch, self.max_wait_ms
        )

    @property
    def engine(self) -> str:
        from kerascope.inference import engine_name

        return engine_name(self.clf.model)

    def describe(self, default: bool) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model (no server paths)."""
        return {
            "name": self.key,
            "default": default,
            "input_size": list(self.clf.input_size),
            "num_classes": self.clf.num_classes,
            "engine": self.engine,
            "methods": list(METHODS),
        }

    def warm_up(self) -> None:
        """Build the forward passes (onnx conversion or jit) of classify and of the default
        explain method before the first request needs them (a first explain costs seconds)."""
        blank = np.zeros((*self.clf.input_size, 3), np.uint8)
        self._classify([blank])
        try:
            self._explain("gradcam", [(blank, -1)])
        except Exception:  # noqa: BLE001  (explain is optional: its requests will say why)
            self._cams.clear()

    def _padded(self, n: int) -> int:
        """Rows to run for ``n`` images: as is on onnx; on keras (jit) the next power of two,
        so batches of every size share ~log2(max_batch) compilations instead of one each."""
        if self.engine != "keras":
            return n
        return min(max(n, self.max_batch), 1 << (n - 1).bit_length())

    def _classify(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        from kerascope.inference import compiled

        x = _pad(np.stack(batch), self._padded(len(batch)))
        probs = compiled(self.clf.model)(x)
        return list(np.asarray(probs, dtype=np.float32)[: len(batch)])

    def resolve_class(self, query: str | None) -> int:
        """A class asked for by name, WordNet id or index -> its output index (-1: top-1)."""
        from kerascope.cam.explain import resolve_target

        if query is None or not query.strip():
            return -1
        try:
            return resolve_target(self.clf, query.strip())
        except (ValueError, TypeError, KeyError) as exc:
            raise RequestError(str(exc.args[0] if exc.args else exc), 400) from None

    def explainer(self, method: str) -> DynamicBatcher:
        """The batcher for one method; the explainer behind it is built on first use."""
        from kerascope.cam.methods import get_method

        try:
            name = get_method(method).name
        except ValueError as exc:
            raise RequestError(str(exc), 400) from None
        with self._lock:
            if name not in self._explainers:
                self._explainers[name] = DynamicBatcher(
                    lambda items, m=name: self._explain(m, items),
                    self.executor,
                    self.max_batch,
                    self.max_wait_ms,
                )
            return self._explainers[name]

    def _explain(self, method: str, items: Sequence[tuple[np.ndarray, int]]) -> list[tuple]:
        """(pixels, target or -1) each -> (map at feature resolution, class, probability)."""
        from kerascope.cam.explain import Explainer

        explainer = self._cams.get(method)  # only this model's thread gets here: no race
        if explainer is None:
            try:
                explainer = self._cams[method] = Explainer(self.clf, method)
            except ValueError as exc:  # MethodError, LayerError: this model cannot
                raise RequestError(str(exc), 400) from None
        rows = self._padded(len(items))
        pixels = _pad(np.stack([p for p, _ in items]), rows)
        targets = _pad(np.array([t for _, t in items], dtype=np.int64), rows)
        maps, classes, probs = explainer.explain_batch(pixels, targets)
        return [(maps[i], int(classes[i]), float(probs[i])) for i in range(len(items))]

    async def close(self) -> None:
        await self.classifier.close()
        for batcher in list(self._explainers.values()):
            await batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``rows`` rows."""
    if rows <= len(x):
        return x
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])


def model_key(clf: Classifier, taken: set[str]) -> str:
    """The name clients use for ``clf``: its zoo or run name, made unique among ``taken``."""
    base = (clf.name or "model").strip() or "model"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def load_served(
    names: Sequence[str], max_batch: int = 32, max_wait_ms: float = 5.0, warm: bool = True
) -> dict[str, ServedModel]:
    """Load every model named (zoo name, run directory or .keras file); the first is default.

    Raises:
        KerascopeError: a model that cannot be loaded (the message names it).
    """
    from kerascope.zoo.models import load_model

    served: dict[str, ServedModel] = {}
    for name in names:
        clf = load_model(name)
        key = model_key(clf, set(served))
        served[key] = ServedModel(key, clf, max_batch, max_wait_ms)
        if warm:
            served[key].warm_up()
    return served
