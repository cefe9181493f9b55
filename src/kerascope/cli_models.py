"""``kerascope models``: the zoo as a table or JSON, one model in detail, a backbone's layers,
the cached weights checked against their published hashes.

Like `kerascope.cli`: parse, call the API, print; no logic of its own (the zoo table's cells
say what `zoo.weights.cache_state` found at each cache path).
"""

from __future__ import annotations

import os

from kerascope.errors import CliError

ACTIONS = ("list", "show", "layers", "verify")


def add_models_command(sub) -> None:
    _add_models(sub)


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the model zoo; `models show|layers NAME`, `models verify [NAME]`",
        description="list: the zoo. show NAME: one model in detail. layers NAME: the backbone's "
        "layers, numbered as Keras counts them (for --unfreeze and the Keras guides). verify "
        "[NAME]: cached weights files against Keras's published hashes, one row each (exit "
        "code 1 if any fails: a mismatch, a damaged or unreadable file, a folder or link loop).",
    )
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list", help="what to do")
    p.add_argument("name", nargs="?", help="the model (show, layers, verify)")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table", help="format")
    p.add_argument(
        "--measure",
        action="store_true",
        help="first time CPU ms/image (8 photos, median of 5 runs) for the models whose weights "
        "are here (list; one that fails is named and skipped, exit code 1), or for NAME (show); "
        "remembered per CPU in the cache folder",
    )
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from kerascope import output

    if args.action in ("show", "layers") and not args.name:
        raise CliError(f"usage: kerascope models {args.action} NAME")
    if args.action == "list" and args.name:
        raise CliError(f"'models' lists every model; for one, use: kerascope models show "
                       f"{args.name}")  # fmt: skip
    if args.measure and args.action not in ("list", "show"):
        raise CliError("--measure goes with `models` (every model here) or `models show NAME`")
    failed = _measure(args.name) if args.measure else 0
    if args.action == "show":
        output.print_spec(args.name, args.format)
    elif args.action == "layers":
        from kerascope.zoo.layers import backbone_layers

        output.print_layers(args.name, backbone_layers(args.name), args.format)
    elif args.action == "verify":
        return _verify(args.name, args.format)
    elif args.format == "json":
        output.print_zoo_json()
    else:
        _print_zoo()
    return 1 if failed else 0


def _measure(name: str | None) -> int:
    """Time NAME (its failure is the command's one-line error), or every model that works
    offline here: one line each, its time or why not, carrying on. Returns how many failed."""
    from kerascope.errors import KerascopeError
    from kerascope.measure import MeasureError, cpu_name, measure
    from kerascope.output import note
    from kerascope.zoo.registry import get
    from kerascope.zoo.weights import offline_models

    if name:
        model = get(name).name
        _say(model, measure(model), cpu_name())
        return 0
    failed = 0
    for model in offline_models():
        try:
            timing = measure(model)
        except MeasureError:  # this machine, not the model: no other model would do better
            raise
        except (KerascopeError, OSError) as exc:  # a bad weights file, a model that fails
            failed += 1
            note(f"{model}: not measured: {_one_line(exc)}")
            continue
        _say(model, timing, cpu_name())
    return failed


def _say(model: str, timing, cpu: str) -> None:
    from kerascope.output import note

    note(f"{model}: {timing.ms_per_image:.1f} ms/image on {cpu} "
         f"({timing.engine} engine, batch {timing.batch})")  # fmt: skip


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": '{exc.filename}'" if exc.filename is not None else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _print_zoo() -> None:
    """The zoo table, with what is at each cache path (`cache_state`): "yes", "no", or the
    problem ("damaged", "not HDF5", "link loop"...) of a file that would not load."""
    from kerascope.measure import timings
    from kerascope.output import Table, _Console, literal
    from kerascope.zoo.registry import all_specs
    from kerascope.zoo.weights import cache_state, package_file

    measured = timings()
    table = Table(title="kerascope model zoo")
    columns = ("name", "input", "params", "depth", "top-1", "top-5", "size MB", "CPU ms/img",
               "offline", "cached")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "name" else "right")
    for s in all_specs():
        ms = measured.get(s.name)
        top = cache_state(s)
        notop = cache_state(s, include_top=False) if s.weights.notop is not None else None
        offline = top.usable or package_file(s) is not None
        table.add_row(
            literal(s.name),
            f"{s.input_size}px",
            f"{s.params / 1e6:.1f}M",
            str(s.depth) if s.depth is not None else "-",
            f"{s.top1:.1%}" if s.top1 else "-",
            f"{s.top5:.1%}" if s.top5 else "-",
            f"{s.size_mb:.1f}",
            f"{ms:.1f}" if ms is not None else "-",
            "yes" if offline else "no",
            literal(cached_column(top.status, None if notop is None else notop.status)),
        )
    _Console(width=140).print(table)


def cached_column(top: str, notop: str | None) -> str:
    """The "cached" cell from the `cache_state` statuses of the with-top and without-top files
    (``notop`` None: one file serves both): "yes", "with top", "without top", "no", or each
    file's problem ("damaged", "with top, without top: link loop")."""
    if notop is None:
        return top
    plain = {("yes", "yes"): "yes", ("yes", "no"): "with top", ("no", "yes"): "without top",
             ("no", "no"): "no"}  # fmt: skip
    if (top, notop) in plain:
        return plain[top, notop]
    parts = []
    for label, status in (("with top", top), ("without top", notop)):
        if status == "yes":
            parts.append(label)
        elif status != "no":
            parts.append(f"{label}: {status}")
    return ", ".join(parts)


def _verify(name: str | None, fmt: str) -> int:
    from kerascope import output
    from kerascope.config import cache_dir
    from kerascope.zoo.registry import get
    from kerascope.zoo.weights_verify import verify, verify_cached

    checks = verify(get(name)) if name else verify_cached()
    folder = cache_dir()
    if not checks and os.path.lexists(folder) and not os.path.isdir(folder):
        from kerascope.zoo import cache_folder  # a file there: no cache at all, and a failure

        output.note(cache_folder.message(cache_folder.problem(folder) or "is no folder", folder))
        return 1
    if not checks:
        output.note(f"no weights files are cached in '{folder}'")
        return 0
    output.print_verify(checks, fmt)
    return 1 if any(c.failed for c in checks) else 0
