"""``python -m kerascope.serve ...``: the ``serve`` command on its own (tests, benchmarks).

The same parser and runner as ``kerascope serve``; it exists so a server can be started before
(and independently of) the wiring of the main command line.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from kerascope.cli_serve import add_serve_command
    from kerascope.config import configure_cli
    from kerascope.errors import KerascopeError

    configure_cli()  # before Keras is imported, as `kerascope` does
    parser = argparse.ArgumentParser(prog="kerascope")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except KerascopeError as exc:
        print(f"kerascope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
