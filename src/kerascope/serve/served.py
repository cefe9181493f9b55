"""The models a server holds: loaded once at start, each with its own worker thread and batchers.

A model is named on the command line (zoo name, run directory or ``.keras`` file) and known to
clients only by a short key (the zoo name or the run's folder name): requests choose among the
loaded models and never pass a path, so nothing a client sends can make the server open a file.

Work comes in two cost classes with a worker thread each, so a cheap request never waits behind
an expensive one: classify and the one-pass explain methods (gradcam, ...) share one queue; the
perturbation methods, which run the network K times per image (scorecam always, ablationcam
unless its closed form applies: see ``cost`` in `kerascope.cam.methods`), have their own, with
their own limits, and are refused (403) unless the server allows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerascope.errors import KerascopeError
from kerascope.serve.batching import DynamicBatcher
from kerascope.serve.limits import MAX_NAME, ServeLimits, shorten
from kerascope.serve.pools import DaemonPool
from kerascope.zoo.models import Classifier

# K forward passes per image (K: channels of the target layer; ~300x Grad-CAM on Lite0).
PERTURBATION = ("scorecam", "ablationcam")


EXPLAIN_BATCH = 8
"""Most images in one pass of a one-pass explain method (classify's passes take --max-batch)."""

EXPENSIVE_MULTIPLE = 10
"""A method stated to cost this many passes of a one-pass method or more is expensive."""


def cost_multiple(method: str) -> float:
    """The ``~Nx`` a method's ``cost`` states (largest if several; 1 if none): "25 noisy
    forwards + backwards (~25x saliency)" -> 25. Read from the registry, so a method added
    there is weighed as it describes itself."""
    from kerascope.cam.methods import get_method

    try:
        cost = getattr(get_method(method), "cost", "")
    except ValueError:
        return 1.0
    return max((float(n) for n in re.findall(r"~(\d+(?:\.\d+)?)x", cost)), default=1.0)


def method_title(name: str, cls: type) -> str:
    """A method's name for people: its ``title``, else the words its docstring opens with
    before the citation ("Grad-CAM (Selvaraju et al. ...": Grad-CAM), with the API name in
    brackets when the title does not spell it ("Class activation mapping (cam)")."""
    title = getattr(cls, "title", "") or (cls.__doc__ or "").strip().split(" (", 1)[0].strip()
    title = title.splitlines()[0].rstrip(":.") if title else ""
    if not title or len(title) > 40:
        return name
    squeezed = re.sub(r"[^a-z0-9+]", "", title.lower())
    return title if squeezed == re.sub(r"[^a-z0-9+]", "", name) else f"{title} ({name})"


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
    limits: ServeLimits = field(default_factory=ServeLimits)
    executor: DaemonPool = field(init=False)
    explain_executor: DaemonPool = field(init=False)
    slow_executor: DaemonPool = field(init=False)
    cold_executor: DaemonPool = field(init=False)
    classifier: DynamicBatcher = field(init=False)
    closed_form_head: bool = field(default=False, init=False)  # GAP + Dense: ablation is cheap
    _explainers: dict[str, DynamicBatcher] = field(default_factory=dict, init=False)
    _expensive: DynamicBatcher | None = field(default=None, init=False)  # all of them, one queue
    _cams: dict[str, Any] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _passes: int = field(default=0, init=False)  # passes running in the worker threads now
    _build_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        # One thread per kind of work: classify's passes run one after another, each using
        # every core; the one-pass explain methods' beside them (a 64-image Guided Grad-CAM
        # pass held classify 17.8 s on classify's thread), an expensive pass beside both.
        # Daemon threads: a stopping server never waits for a pass (`DaemonPool`).
        self.executor = DaemonPool(1, f"kerascope-{self.key}")
        self.explain_executor = DaemonPool(1, f"kerascope-{self.key}-e")
        self.slow_executor = DaemonPool(1, f"kerascope-{self.key}-x")
        # A method's first pass builds and compiles its explainer (seconds): on a thread of
        # its own, so the warm methods do not wait behind it (it stalled 2-9 s per method).
        self.cold_executor = DaemonPool(1, f"kerascope-{self.key}-c")
        self.classifier = DynamicBatcher(
            self._classify, self.executor, self.max_batch, self.max_wait_ms,
            queue_timeout=self.limits.queue_timeout_s, label=f"model '{self.key}'",
        )  # fmt: skip

    @property
    def precision(self) -> str:
        """What classify computes in here: the server's ``--precision`` (`load_served`),
        resolved on this machine (auto: bfloat16 on GPUs that compute it natively)."""
        from kerascope.classification import run_precision

        return run_precision(self.clf)

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label run's per-label thresholds (tuned on validation, `multilabel.json`):
        classify then answers every label whose probability reaches its own, as
        ``classify --model RUN`` does; None for other models."""
        record = self.clf.extra.get("multilabel")
        return list(record["thresholds"]) if record else None

    def label_thresholds(self) -> dict[str, float] | None:
        """`thresholds` by label name, as ``/v1/models`` lists them."""
        cuts = self.thresholds
        if cuts is None:
            return None
        return {name: t for (_, name), t in zip(self.clf.labels, cuts, strict=True)}

    @property
    def engine(self) -> str:
        from kerascope.inference import engine_name

        return engine_name(self.clf.model, precision=self.precision)

    def explain_precision(self, method: str) -> str:
        """What ``method``'s maps are computed in here (float32 where a method has no
        reduced-precision path: the host maps, the smoothing options; int8 has no gradients)."""
        from kerascope.precision import map_precision

        cam = self._cams.get(method)
        return cam.precision if cam is not None else map_precision(self.precision)

    def describe(self, default: bool) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model (no server paths)."""
        methods = self.method_details()
        return {
            "name": self.key,
            "default": default,
            "input_size": list(self.clf.input_size),
            "num_classes": self.clf.num_classes,
            "engine": self.engine,
            "precision": self.precision,
            "multilabel": self.thresholds is not None,
            "thresholds": self.label_thresholds(),
            "methods": [m["name"] for m in methods if m["allowed"]],
            "expensive_methods": [m["name"] for m in methods if m["expensive"]],
            "method_details": methods,
        }

    def method_details(self) -> list[dict[str, Any]]:
        """Every explain method of the registry (`kerascope.cam.methods.METHODS`, so a method
        added there is listed here too): its name, title, cost per image, whether it passes the
        weight-randomisation sanity check (Adebayo et al. 2018), and how this server treats it."""
        from kerascope.cam.methods import METHODS

        return [
            {"name": name, "title": method_title(name, cls), "cost": getattr(cls, "cost", ""),
             "sanity": bool(getattr(cls, "sanity", True)), "expensive": self.expensive(name),
             "allowed": self.allowed(name)}
            for name, cls in METHODS.items()
        ]  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """What ``/healthz`` says about this model: its classify queue and each explain one."""
        with self._lock:
            explainers = dict(self._explainers)
            if self._expensive is not None:
                explainers[EXPENSIVE_QUEUE] = self._expensive
        return {**self.classifier.stats(), "explain": {k: b.stats() for k, b in explainers.items()}}

    def expensive(self, method: str) -> bool:
        """Whether ``method`` (a canonical name) runs the network K times per image here:
        Score-CAM, Ablation-CAM without its closed form, and any method whose ``cost`` says
        it is ``~Nx`` one pass with N >= `EXPENSIVE_MULTIPLE` (SmoothGrad's 25 noisy copies,
        Integrated Gradients' 32 steps): the page offers every method, and these must not
        hold up classify and Grad-CAM in the cheap queue."""
        if method == "ablationcam":
            return not self.closed_form_head
        return method == "scorecam" or cost_multiple(method) >= EXPENSIVE_MULTIPLE

    def allowed(self, method: str) -> bool:
        return self.limits.allow_expensive or not self.expensive(method)

    @property
    def explain_limit(self) -> int:
        """Most images in one pass of a one-pass explain method here."""
        return min(self.max_batch, EXPLAIN_BATCH)

    def explain_rows(self, method: str, n: int) -> int | None:
        """The rows a pass of ``n`` images of ``method`` runs at (`kerascope.serve.warmup`
        compiles them): a cheap method's at the bucket of ``n`` whatever classify runs on
        (explain's gradients run on the jit); an expensive one's as it decides (None: a padded
        row would cost K passes)."""
        from kerascope.sources import bucket

        return None if self.expensive(method) else bucket(n, self.explain_limit)

    def warm_pass(self, method: str | None, n: int) -> None:
        """A pass of ``n`` noise images (not black: Score-CAM's passes run over the channels
        whose map varies, none for a model mapping black to 0), of classify (None) or
        ``method``: what builds and compiles a pass of that size (`kerascope.serve.warmup`)."""
        noise = np.random.default_rng(0).integers(0, 256, (*self.clf.input_size, 3), np.uint8)
        if method is None:
            self._classify([noise] * n)
        else:
            self._explain(method, [(noise, -1)] * n)

    def classify_rows(self, n: int) -> int:
        """Rows classify runs ``n`` images at: ``n`` on onnx, its bucket on the jit."""
        return self.forward().rows(n, self.max_batch)

    def forward(self) -> Any:
        """Classify's compiled forward pass (`kerascope.inference.compiled`), built on first use."""
        from kerascope.inference import compiled

        return compiled(self.clf.model, precision=self.precision)

    @property
    def running(self) -> bool:
        """Whether a pass runs in a worker thread now (a stopping server does not wait for
        it: `kerascope.serve.server`)."""
        return self._passes > 0

    @contextlib.contextmanager
    def _pass(self) -> Iterator[None]:
        with self._lock:
            self._passes += 1
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1

    def _classify(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self._pass():
            return self._classify_now(batch)

    def _classify_now(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        # the forward pads to `classify_rows` itself where it compiles (padded rows never return)
        probs = self.forward()(np.stack(batch), self.max_batch)
        return list(np.asarray(probs, dtype=np.float32))

    def resolve_class(self, query: str | None) -> int:
        """A class asked for by name, WordNet id or index -> its output index (-1: top-1)."""
        from kerascope.cam.explain import resolve_target

        if query is None or not query.strip():
            return -1
        if len(query.strip()) > MAX_NAME:  # no class is named so; nor fuzzy-matched (CPU)
            raise RequestError(f"unknown class {shorten(query.strip())!r} ({len(query):,} "
                               f"characters; class names here are shorter)", 400)  # fmt: skip
        try:
            return resolve_target(self.clf, query.strip())
        except (ValueError, TypeError, KeyError) as exc:
            said = _group_hint(self.clf, query.strip()) or str(exc.args[0] if exc.args else exc)
            raise RequestError(said.replace(query.strip(), shorten(query.strip())), 400) from None

    def method(self, method: str) -> str:
        """The canonical name of a method a request asks for, if this server answers it.

        Raises:
            RequestError: unknown method (400); an expensive one on a server that does not
                allow them (403, naming the flag).
        """
        from kerascope.cam.methods import get_method

        if ":" in str(method):  # each option set compiled anew and kept: memory without end
            raise RequestError(f"this server answers methods by name, without options (ig, "
                               f"not {shorten(method)!r})", 400)  # fmt: skip
        if len(method) > MAX_NAME:
            raise RequestError(f"unknown method {shorten(method)!r}", 400)
        try:
            cls = get_method(method)
        except ValueError as exc:
            raise RequestError(str(exc), 400) from None
        if not self.allowed(cls.name):
            raise RequestError(
                f"method {cls.name} costs {cls.cost} per image; this server refuses it "
                "(start it with --allow-expensive to answer it)",
                403,
            )
        return cls.name

    def explainer(self, method: str, images: int = 1) -> DynamicBatcher | MethodQueue:
        """The queue for one method and a request of ``images``: a batcher of its own for a
        one-pass method; for an expensive one, its place in the model's one expensive queue,
        so ``--max-expensive-inflight`` and the queue deadline hold for all of them together
        (before: per method, so five methods queued five times the budget on one thread).
        The explainer behind it is built on first use.

        Raises:
            RequestError: as `method`; more images than an expensive method takes (413).
        """
        name = self.method(method)
        most = self.limits.max_expensive_images
        if self.expensive(name):
            if images > most:
                raise RequestError(
                    f"method {name} takes at most {most} image(s) per request on this server "
                    f"(--max-expensive-images), got {images}: send them one request at a time",
                    413,
                )
            with self._lock:
                if self._expensive is None:
                    self._expensive = DynamicBatcher(
                        self._explain_each, self.slow_executor, most, self.max_wait_ms,
                        queue_timeout=self.limits.queue_timeout_s,
                        max_items=self.limits.max_expensive_inflight, busy_status=429,
                        label=f"the expensive methods on '{self.key}'",
                    )  # fmt: skip
                return MethodQueue(self._expensive, name)
        with self._lock:
            if name not in self._explainers:
                built = name in self._cams  # warmed up (`kerascope.serve.warmup`)
                # Passes of at most EXPLAIN_BATCH images: a request refused or abandoned
                # meanwhile (its client gone, its deadline passed) loses its later passes,
                # where one pass of 32 ran on for clients that had their 503 long before.
                batcher = DynamicBatcher(
                    lambda items, m=name: self._first_pass(m, items),
                    self.explain_executor if built else self.cold_executor,
                    self.explain_limit, self.max_wait_ms,
                    queue_timeout=self.limits.queue_timeout_s, label=f"{name} on '{self.key}'",
                )  # fmt: skip
                self._explainers[name] = batcher
            return self._explainers[name]

    def _first_pass(self, method: str, items: Sequence[tuple[np.ndarray, int]]) -> list[tuple]:
        """A cheap method's pass; once its explainer is built, its passes move to the thread
        the warm explain methods run on (one pass at a time uses every core)."""
        out = self._explain(method, items)
        self._explainers[method].executor = self.explain_executor
        return out

    def _explain_each(self, items: Sequence[tuple[str, np.ndarray, int]]) -> list[Any]:
        """The expensive queue's pass: (method, pixels, target) each, run method by method; a
        method that fails fails its own rows only (`Failed`), not the others batched with it."""
        out: list = [None] * len(items)
        for method in dict.fromkeys(m for m, _, _ in items):
            rows = [i for i, (m, _, _) in enumerate(items) if m == method]
            try:
                results = self._explain(method, [items[i][1:] for i in rows])
            except Exception as exc:  # noqa: BLE001  (given to this method's requests only)
                results = [Failed(exc)] * len(rows)
            for i, result in zip(rows, results, strict=True):
                out[i] = result
        return out

    def _explain(self, method: str, items: Sequence[tuple[np.ndarray, int]]) -> list[tuple]:
        """(pixels, target or -1) each -> (map at feature resolution, class, probability)."""
        with self._pass():
            return self._explain_now(method, items)

    def _explain_now(self, method: str, items: Sequence[tuple[np.ndarray, int]]) -> list[tuple]:
        from kerascope.cam.explain import Explainer

        explainer = self._cams.get(method)  # one thread per method: no race on its explainer
        if explainer is None:
            with self._build_lock:  # the two threads may both build one (the shared probe)
                try:
                    explainer = self._cams[method] = Explainer(
                        self.clf, method, precision=self.precision
                    )
                except ValueError as exc:  # MethodError, LayerError: this model cannot
                    raise RequestError(str(exc), 400) from None
        pixels = np.stack([p for p, _ in items])
        targets = np.array([t for _, t in items], dtype=np.int64)
        rows = self.explain_rows(method, len(items))  # padded rows never come back
        maps, classes, probs = explainer.explain_batch(pixels, targets, pad_to=rows)
        return [(maps[i], int(classes[i]), float(probs[i])) for i in range(len(items))]

    async def close(self) -> None:
        await self.classifier.close()
        for batcher in [*self._explainers.values(), self._expensive]:
            if batcher is not None:
                await batcher.close()
        for executor in (self.executor, self.explain_executor, self.slow_executor,
                         self.cold_executor):  # fmt: skip
            executor.shutdown(wait=False, cancel_futures=True)


EXPENSIVE_QUEUE = "expensive"
"""The expensive methods' shared queue, as ``/healthz`` names it among the explain queues."""


@dataclass
class MethodQueue:
    """One expensive method's requests in the model's shared expensive queue: payloads go in
    tagged with the method (`ServedModel._explain_each` runs each with its own)."""

    batcher: DynamicBatcher
    method: str

    def expecting(self, n: int):
        return self.batcher.expecting(n)

    async def run_all(self, payloads: Sequence[tuple[np.ndarray, int]]) -> list[Any]:
        return await self.queued(payloads)

    def queued(self, payloads: Sequence[tuple[np.ndarray, int]]) -> asyncio.Future:
        """As `DynamicBatcher.queued`: queued now, one future of the results (a failure of
        this method raised from it)."""
        inner = self.batcher.queued([(self.method, *p) for p in payloads])
        outer = asyncio.ensure_future(self._checked(inner))
        # cancelled before its first step, it never awaited (so never cancelled) the queue's
        outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        return outer

    @staticmethod
    async def _checked(inner: asyncio.Future) -> list[Any]:
        results = await inner
        for result in results:
            if isinstance(result, Failed):  # a copy each: one instance gathered every traceback
                raise copy.copy(result.error)
        return results


@dataclass
class Failed:
    """A row of the expensive queue whose method failed: its request gets the error."""

    error: Exception


def model_key(clf: Classifier, taken: set[str]) -> str:
    """The name clients use for ``clf``: its zoo or run name, made unique among ``taken``."""
    base = (clf.name or "model").strip() or "model"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def load_served(
    names: Sequence[str],
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    warm: bool | str | Sequence[str] = True,
    limits: ServeLimits | None = None,
    precision: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, ServedModel]:
    """Load every model named (zoo name, run directory or .keras file); the first is default.

    ``warm``: what each model builds and compiles first, as ``serve --warm-up`` takes it
    (`kerascope.serve.warmup`): True the default, False nothing. ``announce``: told a line
    per part warmed, with its time.
    ``precision``: what the models compute in (auto, float32, bfloat16, float16; None:
    ``KERASCOPE_PRECISION`` or auto); `ServedModel.precision` says what it resolved to.

    Raises:
        KerascopeError: a model that cannot be loaded (the message names it); a ``warm``
            the server cannot do (`kerascope.serve.warmup.warm_up_plan`, `warm_model`).
    """
    from kerascope.serve.warmup import warm_model, warm_up_plan
    from kerascope.zoo.models import load_model

    plan = warm_up_plan(warm)
    served: dict[str, ServedModel] = {}
    for name in names:
        clf = load_model(name, precision=precision)
        key = model_key(clf, set(served))
        served[key] = ServedModel(key, clf, max_batch, max_wait_ms, limits or ServeLimits())
        if plan is not None:
            warm_model(served[key], plan, announce or (lambda line: None))
    return served


def _group_hint(clf: Any, query: str) -> str | None:
    """A WordNet group (``cat``) asked of the server, which explains single classes: say so and
    name a few of its classes (before: "unknown ImageNet class 'cat'; did you mean 'crate'")."""
    if clf.num_classes != 1000:
        return None
    from kerascope.zoo.hierarchy import find_group

    group = find_group(query)
    if group is None or group.is_class:
        return None
    shown = ", ".join(f"{clf.labels[i][1]} ({clf.labels[i][0]})" for i in group.classes[:3])
    return (f"'{query}' is a group of {len(group.classes)} ImageNet classes; the server explains "
            f"one class: ask for one of them by name or WordNet id (e.g. {shown}); `kerascope "
            "explain --class` takes groups")  # fmt: skip
