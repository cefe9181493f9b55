"""The options ``kerascope explain`` and ``kerascope video`` share, checked as they are parsed
(a bad colormap or precision is one line before any model loads), and ``--class``.

Help texts and choices that need ``kerascope.cam`` are computed only when argparse reads
them (`LazyAction`), so building the parser for other commands imports no NumPy.
"""

from __future__ import annotations

import argparse

from kerascope.batch_sizes import batch_size_help
from kerascope.cli_common import fraction, positive_int
from kerascope.errors import CliError


def _colormap(name: str) -> str:
    """A colormap the overlay knows: checked now, not after the model has loaded."""
    from kerascope.cam.overlay import COLORMAPS, colormap_lut

    try:
        colormap_lut(name)
    except ValueError:
        more = " or a matplotlib colormap (viridis, magma, turbo, ...)" if _has_matplotlib() else ""
        raise argparse.ArgumentTypeError(
            f"unknown colormap {name!r}; use one of: {', '.join(COLORMAPS)}{more}"
        ) from None
    return name


def _precision(name: str) -> str:
    """--precision checked now (one line naming the choices), resolved later on the device."""
    from kerascope.errors import KerascopeError
    from kerascope.precision import check_precision

    try:
        return check_precision(name)
    except KerascopeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


class LazyAction(argparse.Action):
    """Stores one value, with help text and choices computed only when argparse reads them.

    They come from ``kerascope.cam`` (the methods and their costs, the overlay's default
    colormap), which imports NumPy: building the parser for ``kerascope models`` must not.
    """

    def __init__(self, *args, help_text=None, choices_from=None, **kwargs):
        self._help_text, self._choices_from = help_text, choices_from
        super().__init__(*args, **kwargs)

    @property
    def help(self):  # type: ignore[override]
        return self._help_text().replace("%", "%%") if self._help_text else None

    @help.setter
    def help(self, value) -> None:
        pass

    @property
    def choices(self):  # type: ignore[override]
        return self._choices_from() if self._choices_from else None

    @choices.setter
    def choices(self, value) -> None:
        pass

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)


class _MethodChoices(list):
    """The registry's method names; a name with options after a colon (``ig:steps=256``,
    ``smoothgrad:samples=50``) counts as a choice when the method takes those options."""

    def __contains__(self, value: object) -> bool:
        from kerascope.cam.methods import get_method

        name = str(value)
        if ":" not in name:
            return list.__contains__(self, name)
        if not list.__contains__(self, name.partition(":")[0]):
            return False
        try:
            get_method(name)
        except ValueError:
            return False
        return True


def _method_names() -> list[str]:
    from kerascope.cam.methods import METHODS

    return _MethodChoices(METHODS)


def _method_help() -> str:
    """Every method with what it costs per image; the ones that fail the weight-randomisation
    sanity check (Adebayo et al. 2018) are marked, since their maps may not depend on the model."""
    from kerascope.cam.labels import NOT_A_CLASS
    from kerascope.cam.methods import METHODS
    from kerascope.cam.pixel import baseline_bias

    parts = []
    for name, cls in METHODS.items():
        notes = [getattr(cls, "cost", ""), baseline_bias(cls)]
        if getattr(cls, "class_independent", False):
            notes.append(f"its map is {NOT_A_CLASS}")
        if getattr(cls, "sanity", True) is False:
            notes.append("fails the randomisation sanity check")
        notes = [n for n in notes if n]
        parts.append(f"{name} ({'; '.join(notes)})" if notes else name)
    return "CAM method: " + ", ".join(parts)


def _default_colormap() -> str:
    from kerascope.cam import overlay

    return getattr(overlay, "DEFAULT_COLORMAP", "jet")


def metric_names() -> list[str]:
    """--metric's choices: the faithfulness metrics' names (read when argparse asks)."""
    from kerascope.cam.faithfulness import METRICS

    return list(METRICS)


def metric_help() -> str:
    """--metric's help, built from the metrics themselves (read when argparse asks)."""
    from kerascope.cam.compare import DEFAULT_METRIC
    from kerascope.cam.faithfulness import METRICS

    listed = ", ".join(
        f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)"
        for m in METRICS.values()
    )
    return (
        f"metric that ranks the methods in --compare: {listed} (default: {DEFAULT_METRIC}: "
        "ROAD fills removed pixels from their neighbours, so the removed shape does not leak "
        "the class as deletion's flat fill does; deletion is 2-3x faster)"
    )


def add_explain_args(p: argparse.ArgumentParser) -> None:
    """The options explain and video share (model, method, class, drawing, batch, precision)."""
    p.add_argument(
        "--model", "-m", default="efficientnet_lite0", help="zoo name, run or .keras file"
    )
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument("--method", action=LazyAction, metavar="METHOD", default="gradcam",
                   help_text=_method_help, choices_from=_method_names)  # fmt: skip
    p.add_argument("--class", dest="target", help="class to explain: name, WordNet id or index, "
                   "or a group of ImageNet classes: cat, dog, vehicle, any WordNet ancestor "
                   "(default: the top class)")  # fmt: skip
    p.add_argument("--layer", help="layer to explain (default: found automatically)")
    p.add_argument(
        "--fit",
        choices=("whole", "crop"),
        default="whole",
        help="what the model sees: whole (default) = the whole picture resized to its input, "
        "the heatmap covers all of it and the label is that input's class (it can differ from "
        "classify's, which centre-crops); crop = the centre crop classify shows it (its class "
        "and probability), outlined, the rest untinted",
    )
    p.add_argument(
        "--alpha", type=fraction, default=0.4, help="heatmap opacity at its peak, 0 to 1"
    )
    p.add_argument(
        "--colormap",
        type=_colormap,
        action=LazyAction,
        default=None,
        help_text=lambda: f"heatmap colours (default: {_default_colormap()})",
    )
    p.add_argument("--batch-size", "-b", type=positive_int, default=None,
                   help=batch_size_help("explain"))  # fmt: skip
    p.add_argument(
        "--precision",
        type=_precision,
        default=None,
        help="auto, float32, bfloat16 or float16 (default: auto = bfloat16 mixed precision on "
        "GPUs that compute it natively, float32 elsewhere; also KERASCOPE_PRECISION). Reduced "
        "precision applies to the gradient methods without smoothing; the output says which ran",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files; without it an existing file is never replaced, "
        "and an input never is, even with it",
    )


def class_option(clf, query: str | None) -> tuple:
    """--class as (classifier, output index); a WordNet group ("cat", "dog") of an ImageNet
    model as its merged classifier and 0 (`kerascope.cam.groups`); unknown: one line."""
    from kerascope.cam.explain import resolve_target
    from kerascope.cam.groups import class_or_group

    if query is None:
        return clf, None
    try:
        clf, query = class_or_group(clf, query)
        return clf, resolve_target(clf, query)
    except ValueError as exc:
        raise CliError(str(exc)) from None
