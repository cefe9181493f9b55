"""``kerascope explain`` and ``kerascope video``: class-activation heatmaps for pictures and videos.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from kerascope.batch_sizes import batch_size_help, batch_size_or_default
from kerascope.cli_common import DASH_NOTE, fraction, positive_int
from kerascope.errors import CliError


def add_explain_commands(sub) -> None:
    _add_explain(sub)
    _add_video(sub)


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


class _Lazy(argparse.Action):
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
    from kerascope.cam.methods import METHODS

    parts = []
    for name, cls in METHODS.items():
        notes = [getattr(cls, "cost", "")]
        if getattr(cls, "sanity", True) is False:
            notes.append("fails the randomisation sanity check")
        notes = [n for n in notes if n]
        parts.append(f"{name} ({'; '.join(notes)})" if notes else name)
    return "CAM method: " + ", ".join(parts)


def _default_colormap() -> str:
    from kerascope.cam import overlay

    return getattr(overlay, "DEFAULT_COLORMAP", "jet")


def _metric_names() -> list[str]:
    from kerascope.cam.faithfulness import METRICS

    return list(METRICS)


def _metric_help() -> str:
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


def _add_explain_args(p) -> None:
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name or .keras file")
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument("--method", action=_Lazy, metavar="METHOD", default="gradcam",
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
        "the heatmap covers all of it and the label is that input's class; crop = the centre "
        "crop classify shows it (its class and probability), outlined, the rest untinted",
    )
    p.add_argument(
        "--alpha", type=fraction, default=0.4, help="heatmap opacity at its peak, 0 to 1"
    )
    p.add_argument(
        "--colormap",
        type=_colormap,
        action=_Lazy,
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


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="class-activation heatmaps, saved beside the original", epilog=DASH_NOTE
    )
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    _add_explain_args(p)
    p.add_argument(
        "-o",
        "--output",
        default=".",
        help="folder for the <name>-output.jpg pictures (names unique within a run: inputs in "
        "different folders keep their sub-folders). An existing picture is not replaced "
        "unless --overwrite is given; an input is never replaced, even with --overwrite",
    )
    p.add_argument(
        "--aug-smooth",
        action="store_true",
        help="average the maps of 6 copies (flipped x intensity 0.9/1/1.1): 2-5x the time "
        "on CPU (about 4-5x for one image, 2.3x in batches of 16 on Lite0)",
    )
    p.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="first principal component of the weighted activations: less noise",
    )
    p.add_argument("--colorbar", action="store_true", help="add a colour bar to each picture")
    p.add_argument(
        "--score",
        action="store_true",
        help="also print faithfulness numbers per image: deletion and insertion AUC, ROAD "
        "MoRF/LeRF, average drop (seconds per image on a CPU)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run every method on each image, write <name>-compare.jpg (one panel per method, "
        "its scores under it) and print the methods ranked by --metric",
    )
    p.add_argument("--metric", action=_Lazy, metavar="METRIC", default=None,
                   help_text=_metric_help, choices_from=_metric_names)  # fmt: skip
    p.set_defaults(func=_run_explain)


def _add_video(sub) -> None:
    p = sub.add_parser(
        "video", help="heatmaps for every frame of a video, into a new video", epilog=DASH_NOTE
    )
    p.add_argument("input", help="any common video file")
    p.add_argument(
        "-o",
        "--output",
        help="output .mp4 (default: <input>-output.mp4); an existing file is not replaced "
        "unless --overwrite is given, and the input never is",
    )
    _add_explain_args(p)
    p.add_argument("--every", type=positive_int, default=1, help="fresh heatmap every N frames")
    p.add_argument(
        "--layout",
        choices=("side", "overlay"),
        default="side",
        help="side: original | overlay; overlay: the overlay alone, at the input size",
    )
    p.add_argument("--frames-dir", help="also write every output frame as a JPEG here")
    p.set_defaults(func=_run_video)


def _target(clf, query: str | None) -> tuple:
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


def _run_explain(args) -> int:
    from kerascope import output
    from kerascope.sources import normalise_inputs
    from kerascope.zoo.models import load_model

    if args.metric is not None and not args.compare:
        raise CliError("--metric ranks the methods of --compare; add --compare (or drop --metric)")
    sources, skipped, _ = normalise_inputs(args.paths)
    if skipped:
        output.note(f"skipped {len(skipped)} non-image file(s): {', '.join(skipped[:5])}")
    if not sources:
        raise CliError("no images found in " + " ".join(args.paths))
    if not args.compare:  # the overwrite rule, before the model loads (compare checks its own)
        from kerascope.cam.outputs import check_output_folder, check_outputs, output_names

        check_output_folder(args.output, sources)
        names = output_names(sources)
        check_outputs([None if n is None else Path(args.output) / n for n in names], sources,
                      args.overwrite)  # fmt: skip
    clf = load_model(args.model, weights=args.weights)
    args.batch_size = batch_size_or_default(args.batch_size, "explain")  # by the device
    clf, target = _target(clf, args.target)
    if args.compare:
        return _run_compare(args, clf, sources, target)
    options = _smoothing(args)
    _say_precision(args, clf, options)
    with output.progress_bar(len(sources), "explaining", min_total=16) as advance:
        saved = _save(args, clf, sources, target, advance, options)
    output.print_explanations(saved)
    failed = sum(1 for s in saved if not s.ok)
    if args.score:
        _print_scores(args, clf, [s for s, d in zip(sources, saved, strict=True) if d.ok],
                      target, options)  # fmt: skip
    if failed:
        output.note(f"{failed} of {len(saved)} input(s) could not be explained")
    return 1 if failed else 0


def _say_precision(args, clf, options) -> None:
    """What the maps are computed in, as classify says it (`kerascope.precision.ran_in`): when
    --precision was given or it is not float32; and where (the device path or the host)."""
    from kerascope import output
    from kerascope.cam.explain import _cached_explainer
    from kerascope.precision import ran_in

    explainer = _cached_explainer(clf, args.method, args.layer, precision=args.precision,
                                  **options)  # fmt: skip
    if args.precision is None and explainer.precision == "float32" and not explainer.on_device:
        return  # a plain CPU run: nothing to report
    engine = explainer.cam.probe.engine if not explainer.on_device else "keras"
    where = "one compiled call per batch" if explainer.on_device else "maps on the host"
    output.note(f"{explainer.method}: {ran_in(explainer.precision, engine)}, {where}")


def _smoothing(args) -> dict[str, bool]:
    return {"aug_smooth": args.aug_smooth, "eigen_smooth": args.eigen_smooth}


def _save(args, clf, sources, target, advance, options):
    """`save_explanations` with the flags this version of it takes (a flag it lacks is one line)."""
    import inspect

    from kerascope.cam.save import save_explanations

    extra = {**options, "colorbar": args.colorbar, "precision": args.precision,
             "overwrite": args.overwrite, "fit": args.fit}  # fmt: skip
    accepted = inspect.signature(save_explanations).parameters
    missing = [k for k, on in extra.items() if on and k not in accepted]
    if missing:
        raise CliError(f"--{missing[0].replace('_', '-')} is not supported by this version")
    extra = {k: v for k, v in extra.items() if k in accepted}
    return save_explanations(
        sources, args.output, clf, args.method, target, args.layer,
        args.batch_size, args.alpha, args.colormap, progress=advance, **extra,
    )  # fmt: skip


def _print_scores(args, clf, sources, target, options) -> None:
    """Faithfulness of each explained image's map, one table row per image."""
    from rich.table import Table

    from kerascope import output
    from kerascope.cam.explain import resolve_targets, spread_targets
    from kerascope.cam.faithfulness import METRICS, iter_scores

    targets = spread_targets(resolve_targets(clf, target, len(sources)), sources)
    table = Table(title=f"faithfulness of {args.method} (class probability on perturbed copies)")
    table.add_column("image", overflow="fold")
    table.add_column("class", overflow="fold")
    for metric in METRICS.values():
        table.add_column(
            metric.title + (" ↑" if metric.higher_is_better else " ↓"), justify="right"
        )
    with output.progress_bar(len(sources), "scoring", min_total=2) as advance:
        scored = iter_scores(clf, sources, args.method, targets, args.layer,
                             batch_size=args.batch_size, fit=args.fit,
                             precision=args.precision, **options)  # fmt: skip
        for e, f in scored:
            image = output.literal(_short(e.source))
            if f is None:
                table.add_row(image, output.literal(f"error: {e.error}", "red"))
            else:
                table.add_row(image, output.literal(e.class_name),
                              *(_number(m, f.value(m)) for m in METRICS))  # fmt: skip
            advance(1)
    _print(table)
    output.note(
        "↓ lower is better, ↑ higher is better; increase: 1 if image x heatmap scores higher"
    )


def _number(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "increase":
        return "1" if value else "0"
    if metric == "drop":
        return f"{value:.1%}"
    return f"{value:+.3f}" if metric.startswith("road") else f"{value:.3f}"


def _print(table) -> None:
    """A rich table on stdout, as `kerascope.output` prints its own (a closed pipe stays a
    BrokenPipeError for `kerascope.cli.main`)."""
    from kerascope.output import _Console

    _Console(width=140).print(table)


def _short(path: str) -> str:
    """A path as `kerascope.output` shows it in the explain table (relative when under .)."""
    from kerascope.output import _short

    return _short(path)


def _run_compare(args, clf, sources, target) -> int:
    """Every method on each image: one grid picture and a ranking table per image."""
    from kerascope import output
    from kerascope.cam.compare import DEFAULT_METRIC, compare_methods
    from kerascope.cam.methods import METHODS
    from kerascope.cam.outputs import check_output_folder, check_outputs, output_names
    from kerascope.images import ImageError
    from kerascope.sources import Missing

    if args.colorbar:
        raise CliError("--colorbar is for the per-image pictures, not --compare's grid; drop it")
    metric = args.metric or DEFAULT_METRIC
    out_dir = Path(args.output)
    names = output_names(sources)
    paths = [None if n is None else out_dir / (n.removesuffix("-output.jpg") + "-compare.jpg")
             for n in names]  # fmt: skip
    check_output_folder(out_dir, sources)
    check_outputs(paths, sources, args.overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, done = 0, []
    with output.progress_bar(len(sources) * len(METHODS), "comparing (image x method)",
                             min_total=2) as advance:  # fmt: skip
        for source, path in zip(sources, paths, strict=True):
            if isinstance(source, Missing):
                output.note(f"cannot read '{source}': no such file, folder or matching glob")
                failed += 1
                advance(len(METHODS))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            started = []  # compare_methods calls back as each method starts: the one before is done

            def finished_previous(name: str, started=started) -> None:
                if started:
                    advance(1)
                started.append(name)

            try:
                comparison = compare_methods(
                    source, path, clf, target=target, layer=args.layer, metric=metric,
                    alpha=args.alpha, colormap=args.colormap, progress=finished_previous,
                    fit=args.fit, precision=args.precision, **_smoothing(args),
                )  # fmt: skip
            except ImageError as exc:
                output.note(f"cannot read '{source}': {exc.reason}")
                failed += 1
                continue
            finally:
                advance(len(METHODS) - max(len(started) - 1, 0))
            done.append(comparison)
    for comparison in done:  # after the bar: stdout written under a live bar goes to stderr
        _print_ranking(comparison)
    return 1 if failed else 0


def _print_ranking(comparison) -> None:
    from rich.table import Table

    from kerascope import output
    from kerascope.cam.faithfulness import METRICS

    chosen = METRICS[comparison.metric]
    shown = list(dict.fromkeys((comparison.metric, "deletion", "insertion", "drop")))
    better = "higher" if chosen.higher_is_better else "lower"
    title = (
        f"{_short(comparison.source)}: {comparison.class_name} "
        f"{output.percent(comparison.probability)}, "
        f"methods ranked by {chosen.title} ({better} is better)"
    )
    table = Table(title=output.literal(title))
    table.add_column("rank", justify="right")
    table.add_column("method")
    for m in shown:
        table.add_column(METRICS[m].title, justify="right")
    table.add_column("explain s", justify="right")
    table.add_column("cost per image", overflow="fold")
    for rank, row in enumerate(comparison.ranking(), 1):
        f = row.faithfulness
        sanity = "" if row.sanity else " (fails sanity check)"
        empty = " (empty map)" if row.empty else ""
        table.add_row(str(rank), output.literal(row.method + sanity + empty),
                      *(_number(m, f.value(m)) for m in shown), f"{row.seconds:.2f}",
                      output.literal(row.cost))  # fmt: skip
    _print(table)
    for row in comparison.methods:
        if not row.ok:
            output.note(f"skipped {row.method}: {row.skipped}")
    if comparison.path is not None:
        output.note(f"wrote {comparison.path}")


def _run_video(args) -> int:
    from kerascope import output
    from kerascope.video import estimate_frames, explain_video
    from kerascope.zoo.models import load_model

    _check_video_output(args.input, args.output, args.overwrite)
    total = estimate_frames(args.input)
    clf = load_model(args.model, weights=args.weights)
    args.batch_size = batch_size_or_default(args.batch_size, "explain")  # by the device
    clf, target = _target(clf, args.target)
    with output.progress_bar(total, "video frames", min_total=1) as advance:
        report = explain_video(
            args.input,
            args.output,
            clf=clf,
            method=args.method,
            target=target,
            every=args.every,
            layout=args.layout,
            frames_dir=args.frames_dir,
            batch_size=args.batch_size,
            alpha=args.alpha,
            colormap=args.colormap,
            progress=advance,
            layer=args.layer,
            precision=args.precision,
            overwrite=args.overwrite,
            fit=args.fit,
        )
    audio = "audio kept" if report.audio_kept else "no audio"
    output.note(
        f"wrote {report.output}: {report.frames} frames, {float(report.fps):.2f} fps, "
        f"{report.size[0]}x{report.size[1]}, {audio} ({report.frames_per_second:.1f} frames/s, "
        f"maps in {report.precision})"
    )
    return 0


def _check_video_output(source: str, target: str | None, overwrite: bool = False) -> None:
    """Refuse an --output that would overwrite the input or has no folder, before any work
    (an existing file without --overwrite is `kerascope.video.check_output`'s one line)."""
    if target is None:
        return
    folder = Path(target).parent
    if not folder.is_dir():
        raise CliError(
            f"the folder of --output '{target}' does not exist ('{folder}'); "
            "create it or choose another --output"
        )
    same = Path(os.path.realpath(source)) == Path(os.path.realpath(target))
    with contextlib.suppress(OSError):
        same = same or os.path.samefile(source, target)
    if same:
        raise CliError(
            f"--output '{target}' is the input video; choose another name "
            "(default: <input>-output.mp4)"
        )
