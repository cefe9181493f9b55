"""The ``kerascope serve`` subcommand: parse, check, start the server. No logic of its own."""

from __future__ import annotations

from kerascope.errors import CliError


def add_serve_command(sub) -> None:
    """Register ``serve`` on the subparsers object of the main parser."""
    p = sub.add_parser("serve", help="web page and HTTP API: classify and explain photos")
    p.add_argument(
        "--model", "-m", dest="models", action="extend", nargs="+",
        metavar="NAME|RUN_DIR|FILE.keras",
        help="model(s) to serve; the first is the default (default: efficientnet_lite0)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument(
        "--max-batch", type=int, default=32,
        help="most images per forward pass; 1 switches dynamic batching off (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0,
        help="how long a request may wait for others to share its pass (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-mb", type=float, default=20.0, help="largest request body (default 20)"
    )
    p.add_argument(
        "--log-level", default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level; info logs every request (default)",
    )  # fmt: skip
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from kerascope.serve.server import run_server

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    if args.max_batch < 1:
        raise CliError("--max-batch must be at least 1")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise CliError("--max-wait-ms must be 0..10000")
    if not args.max_body_mb > 0:
        raise CliError("--max-body-mb must be positive")
    run_server(
        args.models or ["efficientnet_lite0"],
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_mb=args.max_body_mb,
        log_level=args.log_level,
    )
    return 0
