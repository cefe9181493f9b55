"""What a server builds and compiles before it answers (``kerascope serve --warm-up``).

A method's first pass at a batch size builds its explainer and compiles that shape on the jit:
seconds for the pixel methods (Lite0 on a 2-core CPU: a first saliency request waited 37 s with
JAX's compilation cache cold, and requests queued behind it got 503 past --queue-timeout-s).
Warmed up, every size its passes run at (`ServedModel.explain_rows`: 1, 2, 4 and 8 images) is
compiled before the server answers (saliency: 50 s cold, 11 s with the cache warm), so no
request waits for a compile, and ``/healthz`` answers only a server that is ready: a load
balancer sends it nothing before. Classify is warmed up for every size it compiles
(`classify_sizes`: one image on onnxruntime, the CPU default, which compiles nothing per size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kerascope.errors import KerascopeError

if TYPE_CHECKING:
    from kerascope.serve.served import ServedModel

DEFAULT = ("gradcam",)
"""What a server warms up unless told: gradcam, the page's method (on the CPU's onnx engine
it compiles nothing: its four sizes cost Lite0's startup 0.5 s more than one)."""


class WarmUpError(KerascopeError):
    """A warm-up the server cannot do: the message names the flag and what to change."""


@dataclass(frozen=True)
class WarmUp:
    """What to warm up: ``methods`` (canonical names), or ``every`` method this server
    answers. ``named``: the user named them, so one a model cannot explain stops the start;
    the default's and ``all``'s are left to their requests (which say why), with a line."""

    methods: tuple[str, ...] = DEFAULT
    every: bool = False
    named: bool = False


def warm_up_plan(warm: bool | str | Sequence[str] | None) -> WarmUp | None:
    """``--warm-up``'s value (or `load_served`'s ``warm``) as a `WarmUp`: True the default,
    False or None nothing at all (not even classify).

    Raises:
        WarmUpError: an empty list, an unknown method, a method with options, ``all`` or
            ``none`` beside other names (one line naming ``--warm-up`` and the choices).
    """
    from kerascope.cam.methods import get_method

    if warm is None or warm is False:
        return None
    if warm is True:
        return WarmUp()
    names = [n.strip() for n in (warm.split(",") if isinstance(warm, str) else map(str, warm))]
    if not names or not all(names):
        raise WarmUpError(f"--warm-up takes method names separated by commas, got {warm!r}")
    words = {n.lower() for n in names} & {"all", "none"}
    if words and len(names) > 1:
        raise WarmUpError(f"--warm-up {words.pop()} stands alone, got {','.join(names)!r}")
    if words:
        return WarmUp((), every="all" in words)
    methods = []
    for name in names:
        if ":" in name:
            raise WarmUpError(f"--warm-up takes methods by name, without options, got {name!r}")
        try:
            methods.append(get_method(name).name)
        except ValueError as exc:
            raise WarmUpError(f"--warm-up: {exc}, all or none") from None
    return WarmUp(tuple(dict.fromkeys(methods)), named=True)


def warm_sizes(model: ServedModel, method: str) -> list[int]:
    """The batch sizes ``method``'s passes run at on ``model`` (`ServedModel.explain_rows`): a
    cheap method's buckets (1, 2, 4, 8), an expensive one's 1..--max-expensive-images."""
    if model.explain_rows(method, 1) is None:
        return list(range(1, model.limits.max_expensive_images + 1))
    return _run_at(lambda n: model.explain_rows(method, n), model.explain_limit)


def classify_sizes(model: ServedModel) -> list[int]:
    """The batch sizes classify's passes run at that each compile on their first use: on the
    jit (a GPU's engine) every bucket up to --max-batch (Lite0 at 32: 1, 2, 4 ... 32), on
    onnxruntime (the CPU's, which compiles nothing per size) one image builds it all."""
    if not model.forward().pads:
        return [1]
    return _run_at(model.classify_rows, model.max_batch)


def _run_at(rows: Callable[[int], int], most: int) -> list[int]:
    """The distinct row counts passes of 1..``most`` images run at (the server's own rule)."""
    return sorted({rows(n) for n in range(1, most + 1)})


def warm_model(model: ServedModel, plan: WarmUp, say: Callable[[str], None]) -> None:
    """Build and compile classify and ``plan``'s methods on ``model``, saying each one's time.

    Raises:
        WarmUpError: a method the server refuses (expensive, without --allow-expensive), or
            one named that this model cannot explain.
    """
    from kerascope.cam.methods import METHODS

    model.closed_form_head = _closed_form(model)  # first: whether ablationcam is expensive
    methods = [m for m in METHODS if model.allowed(m)] if plan.every else list(plan.methods)
    refused = [m for m in methods if not model.allowed(m)]
    if refused:
        raise WarmUpError(
            f"--warm-up {','.join(refused)}: expensive on model '{model.key}', which this "
            "server refuses; start it with --allow-expensive to warm up and answer "
            f"{'them' if len(refused) > 1 else 'it'}"
        )
    sizes = classify_sizes(model)
    took = _timed(lambda: [model.warm_pass(None, n) for n in sizes])
    say(
        f"{model.key}: classify ready in {took:.1f} s"
        + (f" (compiled for {', '.join(map(str, sizes))} image(s))" if len(sizes) > 1 else "")
    )
    for method in methods:
        sizes = warm_sizes(model, method)
        try:
            took = _timed(lambda m=method, s=sizes: [model.warm_pass(m, n) for n in s])
        except Exception as exc:  # a method this model cannot explain, or its pass failed
            if plan.named:
                if isinstance(exc, KerascopeError | ValueError):
                    raise WarmUpError(f"--warm-up {method} on model '{model.key}': {exc}") from None
                raise
            model._cams.pop(method, None)  # built but failing: its requests build it anew
            say(f"{model.key}: {method} not warmed up: {exc}")
            continue
        shown = ", ".join(map(str, sizes))
        say(f"{model.key}: {method} warmed up for {shown} image(s) in {took:.1f} s")


def _closed_form(model: ServedModel) -> bool:
    """Whether ``model``'s target layer feeds GAP + Dense (Ablation-CAM's closed form)."""
    from kerascope.cam.base import get_probe

    try:
        return bool(get_probe(model.clf, None).head.analytic)
    except Exception:  # noqa: BLE001  (no probe: explain requests will say why)
        return False


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start
