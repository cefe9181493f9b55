"""The ``kerascope serve`` subcommand: parse, check, start the server. No logic of its own."""

from __future__ import annotations

import math

from kerascope.cli_common import positive_int
from kerascope.errors import CliError

# (flag, ServeLimits field, type, help): what one client may cost the server
LIMITS = (
    ("--max-body-mb", "max_body_mb", float, "largest request body (default 20)"),
    ("--max-request-mp", "max_request_mp", float,
     "decoded megapixels per request, over it 413 (default 64; explain also counts the "
     "pictures it draws)"),
    ("--max-inflight-mp", "max_inflight_mp", float,
     "decoded megapixels of all requests in progress, over it 503 + Retry-After (default 256)"),
    ("--queue-timeout-s", "queue_timeout_s", float,
     "longest wait for a model, else 503 + Retry-After (default 30)"),
    ("--max-expensive-images", "max_expensive_images", int,
     "images per request of an expensive method, over it 413 (default 1)"),
    ("--max-expensive-inflight", "max_expensive_inflight", int,
     "expensive-method images queued or running per model, over it 429 + Retry-After "
     "(default 2)"),
    ("--keep-alive-s", "keep_alive_s", float, "idle time between requests (default 5)"),
    ("--header-timeout-s", "header_timeout_s", float,
     "time for a request's headers, from its first byte or the connect (default 10)"),
    ("--body-timeout-s", "body_timeout_s", float,
     "time for a whole request body, however it trickles, else 408 (default 120)"),
    ("--limit-concurrency", "limit_concurrency", int,
     "open connections; more are answered 503 and closed (default 256)"),
)  # fmt: skip


def add_serve_command(sub) -> None:
    """Register ``serve`` on the subparsers object of the main parser."""
    from kerascope.serve.limits import ServeLimits

    p = sub.add_parser("serve", help="web page and HTTP API: classify and explain photos")
    p.add_argument(
        "--model", "-m", dest="models", action="extend", nargs="+",
        metavar="NAME|RUN_DIR|FILE.keras",
        help="model(s) to serve; the first is the default (default: efficientnet_lite0)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument(
        "--max-batch", type=positive_int, default=32,
        help="most images per forward pass; 1 switches dynamic batching off (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0,
        help="how long a request may wait for others to share its pass (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level; info logs every request (default)",
    )  # fmt: skip
    limits = p.add_argument_group("limits (what one client may cost the server)")
    limits.add_argument(
        "--allow-expensive", action="store_true",
        help="answer the perturbation methods (scorecam, ablationcam without its closed form: "
        "K forward passes per image) on their own worker; refused with 403 otherwise",
    )  # fmt: skip
    defaults = ServeLimits()
    for flag, field, kind, text in LIMITS:
        unit = flag.rsplit("-", 1)[1].upper()
        limits.add_argument(
            flag, dest=field, type=kind, default=getattr(defaults, field), help=text,
            metavar=unit if unit in ("MB", "MP", "S") else "N",
        )  # fmt: skip
    p.add_argument(
        "--warm-up", metavar="METHODS",
        help="explain methods to build and compile for every batch size before the server "
        "answers: a comma-separated list, all (every method it answers) or none (classify "
        "only); default gradcam",
    )  # fmt: skip
    from kerascope.precision import PRECISION_HELP, add_precision_option

    add_precision_option(p, PRECISION_HELP + "; /v1/models and every response say what ran")
    p.set_defaults(func=_run_serve)


def limits_from(args):
    """The `ServeLimits` the flags ask for, or a CliError naming the first bad flag."""
    from kerascope.serve.limits import ServeLimits

    for flag, field, _, _ in LIMITS:
        value = getattr(args, field)
        if not (math.isfinite(value) and value > 0):
            raise CliError(f"{flag} must be a finite number above 0, got {value:g}")
    if args.max_body_mb > 1_000_000:
        raise CliError(f"--max-body-mb must be at most 1000000 (1 TB), got {args.max_body_mb:g}")
    values = {field: getattr(args, field) for _, field, _, _ in LIMITS}
    limits = ServeLimits(allow_expensive=args.allow_expensive, **values)
    try:
        limits.check()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return limits


def _run_serve(args) -> int:
    from kerascope.serve.server import run_server
    from kerascope.serve.warmup import warm_up_plan

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise CliError("--max-wait-ms must be 0..10000")
    limits = limits_from(args)
    warm = True if args.warm_up is None else args.warm_up  # True: the default warm-up
    warm_up_plan(warm)  # a name that is no method: one line now, before loading
    run_server(
        args.models or ["efficientnet_lite0"],
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        log_level=args.log_level,
        limits=limits,
        precision=args.precision,
        exit_on_stop=True,  # a pass still running is not waited for
        warm=warm,
    )
    return 0
