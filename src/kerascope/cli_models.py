"""``kerascope models``: the zoo as a table or JSON, one model in detail, a backbone's layers,
the cached weights checked against their published hashes.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

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
        "[NAME]: cached weights files against Keras's published hashes (exit code 1 on a "
        "mismatch).",
    )
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list", help="what to do")
    p.add_argument("name", nargs="?", help="the model (show, layers, verify)")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table", help="format")
    p.add_argument(
        "--measure",
        action="store_true",
        help="first time CPU ms/image (8 photos, median of 5 runs) for the models whose weights "
        "are here (list), or for NAME (show); remembered per CPU in the cache folder",
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
    if args.measure:
        _measure(args.name)
    if args.action == "show":
        output.print_spec(args.name, args.format)
    elif args.action == "layers":
        from kerascope.zoo.layers import backbone_layers

        output.print_layers(args.name, backbone_layers(args.name), args.format)
    elif args.action == "verify":
        return _verify(args.name, args.format)
    else:
        output.print_zoo(args.format)
    return 0


def _measure(name: str | None) -> None:
    from kerascope.measure import cpu_name, measure
    from kerascope.output import note
    from kerascope.zoo.registry import get
    from kerascope.zoo.weights import offline_models

    names = [get(name).name] if name else offline_models()
    for model in names:
        timing = measure(model)
        note(f"{model}: {timing.ms_per_image:.1f} ms/image on {cpu_name()} "
             f"({timing.engine} engine, batch {timing.batch})")  # fmt: skip


def _verify(name: str | None, fmt: str) -> int:
    from kerascope import output
    from kerascope.config import cache_dir
    from kerascope.zoo.registry import get
    from kerascope.zoo.weights import verify, verify_cached

    checks = verify(get(name)) if name else verify_cached()
    if not checks:
        output.note(f"no weights files are cached in '{cache_dir()}'")
        return 0
    output.print_verify(checks, fmt)
    return 1 if any(c.failed for c in checks) else 0
