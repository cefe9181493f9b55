"""``kerascope explain``: class-activation heatmaps for pictures (``video``: `cli_video`).

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerascope.batch_sizes import batch_size_or_default
from kerascope.cli_common import DASH_NOTE
from kerascope.cli_explain_args import (
    LazyAction,
    add_explain_args,
    class_option,
    metric_help,
    metric_names,
)
from kerascope.errors import CliError
from kerascope.files import missing_folders, remove_empty
from kerascope.interrupts import stopped_by


def add_explain_commands(sub) -> None:
    """Register ``explain`` and ``video`` on the subparsers object of the main parser."""
    from kerascope import cli_video

    _add_explain(sub)
    cli_video.add_video_command(sub)


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="class-activation heatmaps: the original beside its heatmap, as <name>-output.jpg "
        "in -o (default: the current folder)",
        epilog=DASH_NOTE,
    )
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    add_explain_args(p)
    p.add_argument(
        "-o",
        "--output",
        default=".",
        help="folder for the <name>-output.jpg pictures (names unique within a run: inputs in "
        "different folders keep their sub-folders). An existing picture is not replaced "
        "unless --overwrite is given; an input is never replaced, even with --overwrite",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out the images whose picture is already in -o (an interrupted run, run "
        "again, explains only the rest); not with --overwrite",
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
    p.add_argument(
        "--colorbar",
        action="store_true",
        help="add a colour key under each overlay, from 0 to the map's own maximum: every map "
        "is scaled to its maximum, so colours are not comparable between pictures or classes "
        "(a class under 1%% is labelled 'map shape only')",
    )
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
        "its scores under it) and print the methods ranked by --metric, beside 4 seeded random "
        "maps scored the same way (their mean and sd): a method no better than the best of them "
        "is marked, and the best one that passes the sanity check and beats them is drawn in gold",
    )
    p.add_argument("--metric", action=LazyAction, metavar="METRIC", default=None,
                   help_text=metric_help, choices_from=metric_names)  # fmt: skip
    p.set_defaults(func=_run_explain)


def _run_explain(args) -> int:
    """`_explain` with a taken output said in the command line's words (--overwrite, -o),
    not the API's (`kerascope.cam.outputs.OutputExistsError`)."""
    from kerascope.cam.outputs import OutputExistsError

    try:
        return _explain(args)
    except OutputExistsError as exc:
        raise CliError(exc.cli) from None


def _explain(args) -> int:
    from kerascope import output
    from kerascope.sources import normalise_inputs
    from kerascope.zoo.models import load_model

    if args.skip_existing and (args.overwrite or args.compare):
        raise CliError(
            "--skip-existing keeps the pictures already there: not with "
            + ("--overwrite" if args.overwrite else "--compare")
        )
    if args.metric is not None and not args.compare:
        raise CliError("--metric ranks the methods of --compare; add --compare (or drop --metric)")
    if not args.compare:
        from kerascope.cam.methods import check_class_choice

        try:
            check_class_choice(args.method, args.target)
        except ValueError as exc:
            raise CliError(f"--class: {exc}") from None
    sources, skipped, _ = normalise_inputs(args.paths)
    if skipped:
        from kerascope.images.inputs import skipped_note

        output.note(skipped_note(skipped))
    if not args.compare:
        from kerascope.cam.outputs import without_earlier_outputs

        sources, earlier = without_earlier_outputs(sources, args.output)
        if earlier:
            output.note(f"left out {earlier} picture(s) of an earlier explain in "
                        f"'{args.output}' (*-output.jpg)")  # fmt: skip
    if not sources:
        raise CliError("no images found in " + " ".join(args.paths))
    explained = sources  # the images this run explains (--skip-existing: fewer)
    if not args.compare:  # the overwrite rule, before the model loads (compare checks its own)
        from kerascope.cam.outputs import check_output_folder, check_outputs, output_names

        check_output_folder(args.output, sources)
        names = output_names(sources)
        paths = [None if n is None else Path(args.output) / n for n in names]
        check_outputs(paths, sources, args.overwrite or args.skip_existing)
        if args.skip_existing:  # as save_explanations leaves them out: names of the whole list
            explained = [s for s, p in zip(sources, paths, strict=True)
                         if p is None or not os.path.lexists(p)]  # fmt: skip
            if not explained:
                output.note(f"every picture is already in '{args.output}' (--skip-existing)")
                return 0
            if len(explained) < len(sources):
                output.note(f"{len(sources) - len(explained)} picture(s) already in "
                            f"'{args.output}' are kept (--skip-existing): explaining the "
                            f"other {len(explained)}")  # fmt: skip
    clf = load_model(args.model, weights=args.weights)
    args.batch_size = batch_size_or_default(args.batch_size, "explain", clf.input_size)
    clf, target = class_option(clf, args.target)
    _say_fit(args, clf)
    if args.compare:
        return _run_compare(args, clf, sources, target)
    options = _smoothing(args)
    _say_precision(args, clf, options)
    advance = output.Advance(lambda n: None)  # until the bar is up
    made = missing_folders(args.output)  # made by this run: removed again if left empty
    try:
        with output.progress_bar(len(explained), "explaining", min_total=16) as advance:
            saved = _save(args, clf, sources, target, advance, options)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: say what is there
        if advance.done:
            instead = " instead of --overwrite" if args.overwrite else ""
            output.note(f"{stopped_by(stop)} after {advance.done} of {len(explained)} images; "
                        f"the pictures of those explained are in '{args.output}': the same "
                        f"command with --skip-existing{instead} explains the rest")  # fmt: skip
        else:  # not an empty folder named as if it held something
            remove_empty(made)
            output.note(f"{stopped_by(stop)} before any picture was written")
        stop.told = True
        raise
    _print_explained(saved)
    failed = sum(1 for s in saved if not s.ok)
    if args.score:
        _print_scores(args, clf, [s for s, d in zip(explained, saved, strict=True) if d.ok],
                      target, options)  # fmt: skip
    if failed:
        output.note(f"{failed} of {len(saved)} input(s) could not be explained")
    return 1 if failed else 0


def _print_explained(saved: list) -> None:
    """One row per `SavedExplanation`: the class explained and the picture written, or why
    not. A class-independent map's class cell says so beside the top class (`class_cell`):
    the table called EigenCAM's map "Egyptian_cat" while its picture said "not class-specific"."""
    from rich.table import Table

    from kerascope import output
    from kerascope.cam.labels import class_cell

    table = Table()
    for col in ("image", "class", "probability", "written to"):
        table.add_column(col, overflow="fold")
    for s in saved:
        if not s.ok:
            table.add_row(output.literal(_short(s.source)),
                          output.literal(f"error: {s.error}", "red"), "", "")  # fmt: skip
            continue
        e = s.explanation
        name = class_cell(e.class_name, getattr(e, "method", None))
        empty = " (empty map: no evidence for this class)" if getattr(s, "empty", False) else ""
        written = output.literal(_short(str(s.path)))
        table.add_row(output.literal(_short(s.source)), output.literal(name + empty),
                      output.percent(e.probability), written)  # fmt: skip
    _print(table)


FIT_NOTE = ("explain scores the whole picture; classify centre-crops by default, so its top "
            "class can differ: --fit crop matches it")  # fmt: skip
FIT_NOTE_CLASS = ("explain scores the whole picture; classify centre-crops by default, so its "
                  "probabilities can differ: --fit crop matches them")  # fmt: skip
"""With --class the top class is not what differs (its probability is)."""


def _say_fit(args, clf) -> None:
    """Once per run, when ``--fit whole`` shows the model other pixels than classify does (a
    zoo model's centre crop): chelsea.png was Egyptian_cat 77.1 % here and tiger_cat 38.5 %
    in classify, and nothing said why."""
    from kerascope import output
    from kerascope.cam.fitting import fit_convention

    if args.fit == "whole" and fit_convention(clf, "whole") != clf.convention:
        output.note(FIT_NOTE_CLASS if getattr(args, "target", None) else FIT_NOTE)


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
    why = f" ({explainer.cam.precision_note})" if explainer.cam.precision_note else ""
    output.note(f"{explainer.method}: {ran_in(explainer.precision, engine)}, {where}{why}")


def _smoothing(args) -> dict[str, bool]:
    return {"aug_smooth": args.aug_smooth, "eigen_smooth": args.eigen_smooth}


def _save(args, clf, sources, target, advance, options):
    """`save_explanations` with the flags this version of it takes (a flag it lacks is one line)."""
    import inspect

    from kerascope.cam.save import save_explanations

    extra = {**options, "colorbar": args.colorbar, "precision": args.precision,
             "overwrite": args.overwrite, "fit": args.fit,
             "skip_existing": args.skip_existing}  # fmt: skip
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
    from kerascope.cam.labels import NOT_A_CLASS, class_cell, is_class_independent

    targets = spread_targets(resolve_targets(clf, target, len(sources)), sources)
    independent = is_class_independent(args.method)
    about = (f"; its map is {NOT_A_CLASS}: scored against the top class, which it does not "
             "explain" if independent else "")  # fmt: skip
    table = Table(
        title=f"faithfulness of {args.method} (the class's probability on perturbed "
        f"copies: areas under its curve, ROAD and avg drop as changes{about})"
    )
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
                table.add_row(image, output.literal(class_cell(e.class_name, args.method)),
                              *(_number(m, f.value(m)) for m in METRICS))  # fmt: skip
            advance(1)
    _print(table)
    output.note(
        "↓ lower is better, ↑ higher is better; increase: 1 if image x heatmap scores higher"
    )


def _number(metric: str, value: float | None) -> str:
    from kerascope.cam.compare import format_value

    return format_value(metric, value)


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
    from kerascope.cam.compare import DEFAULT_METRIC
    from kerascope.cam.outputs import check_output_folder, check_outputs, output_names

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
    done: list = []
    try:
        _compare_each(args, clf, sources, target, paths, metric, done)
    except KeyboardInterrupt as stop:  # before: "interrupted", nothing said of the grids kept
        drawn = sum(1 for c in done if c is not None)
        kept = f"the grids of {drawn} are in '{out_dir}'" if drawn else "no grid was written"
        output.note(f"{stopped_by(stop)} after {len(done)} of {len(sources)} images; {kept}")
        stop.told = True
        raise
    failed = sum(1 for c in done if c is None)
    for comparison in done:  # after the bar: stdout written under a live bar goes to stderr
        if comparison is not None:
            _print_ranking(comparison)
    return 1 if failed else 0


def _compare_each(args, clf, sources, target, paths, metric, done: list) -> None:
    """Each image's grid in turn, appended to ``done`` (None for one that failed)."""
    from kerascope import output
    from kerascope.cam.compare import compare_methods
    from kerascope.cam.methods import METHODS
    from kerascope.images import ImageError
    from kerascope.sources import Missing

    with output.progress_bar(len(sources) * len(METHODS), "comparing (image x method)",
                             min_total=2) as advance:  # fmt: skip
        for source, path in zip(sources, paths, strict=True):
            if isinstance(source, Missing):
                output.note(f"cannot read '{source}': no such file, folder or matching glob")
                done.append(None)
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
                done.append(None)
                continue
            finally:
                advance(len(METHODS) - max(len(started) - 1, 0))
            done.append(comparison)


def _print_ranking(comparison) -> None:
    from rich.table import Table

    from kerascope import output
    from kerascope.cam.faithfulness import METRICS

    chosen = METRICS[comparison.metric]
    sign = 1.0 if chosen.higher_is_better else -1.0
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
    ref = comparison.bar()  # the best random map: the methods below it do not beat it
    for rank, row in enumerate(comparison.ranking(), 1):
        f = row.faithfulness
        value = f.value(comparison.metric)
        if ref is not None and (value is None or sign * value <= sign * ref):
            _reference_row(table, comparison, shown)  # where it ranks: the methods below lose
            ref = None
        marks = row.marks() + (["empty map"] if row.empty else [])
        name = row.method + (f" ({'; '.join(marks)})" if marks else "")
        table.add_row(str(rank), output.literal(name),
                      *(_number(m, f.value(m)) for m in shown), f"{row.seconds:.2f}",
                      output.literal(row.cost))  # fmt: skip
    if ref is not None:
        _reference_row(table, comparison, shown)
    _print(table)
    for line in _ranking_notes(comparison):
        output.note(line)
    for row in comparison.methods:
        if not row.ok:
            output.note(f"skipped {row.method}: {row.skipped}")
    if comparison.path is not None:
        output.note(f"wrote {comparison.path}")


def _reference_row(table, comparison, shown) -> None:
    """The random maps' row: no rank, their mean (± sd) by the same metrics."""
    from kerascope import output
    from kerascope.cam.compare import reference_value

    runs = len(comparison.reference_runs)
    seeds = f"{runs} seeds" if runs > 1 else "seeded"
    cells = [reference_value(comparison, m) for m in shown]
    if runs > 1:  # the ranking metric's: the bar the methods above the row beat
        cells[0] += f" (best {_number(comparison.metric, comparison.bar())})"
    table.add_row("-", output.literal(f"{comparison.reference.method} (reference)"), *cells,
                  "", f"noise at the input size, {seeds}", style="dim")  # fmt: skip


def _ranking_notes(comparison) -> list[str]:
    """The lines under --compare's table: the reference and gold, what the metric favours,
    a negligible class, the black baseline's bias when ig ran."""
    from kerascope.cam.compare import NO_BETTER, header_notes
    from kerascope.cam.methods import get_method
    from kerascope.cam.pixel import baseline_bias

    notes = header_notes(comparison)
    if any(row.beats_random is False for row in comparison.methods):
        maps = (
            "the best of the seeded noise maps"
            if comparison.reference_runs
            else "the seeded noise map"
        )
        notes.append(f"'{NO_BETTER}': it does not beat {maps} by this metric")
    for row in comparison.methods:
        bias = baseline_bias(get_method(row.method)) if row.ok else ""
        if bias:
            notes.append(f"{row.method}: {bias}")
    return notes
