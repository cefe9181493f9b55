"""``kerascope models``: the zoo as a table or JSON, one model in detail.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

from kerascope.errors import CliError


def add_models_command(sub) -> None:
    _add_models(sub)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo, or `models show NAME`")
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="what to do")
    p.add_argument("name", nargs="?", help="model to show")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table", help="format")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from kerascope import output

    if args.action == "show":
        if not args.name:
            raise CliError("usage: kerascope models show NAME")
        output.print_spec(args.name, args.format)
    else:
        output.print_zoo(args.format)
    return 0
