"""The serve command's limit flags, checked before anything loads: a bad value, or a pair
that could never be met, is one line naming the flag (exit 2), never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-body-mb", "inf"), ("--max-body-mb", "nan"), ("--max-body-mb", "-1"),
     ("--max-body-mb", "0"), ("--max-request-mp", "inf"), ("--body-timeout-s", "nan"),
     ("--limit-concurrency", "0"), ("--max-expensive-images", "-2")],
)  # fmt: skip
def test_bad_limits_are_one_line(flag, value):
    import argparse

    from kerascope.cli_serve import add_serve_command
    from kerascope.errors import CliError

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", flag, value])
    with pytest.raises(CliError, match=re.escape(flag) + " must be a finite number above 0"):
        args.func(args)


def test_more_expensive_images_per_request_than_in_flight_is_refused_at_the_start():
    """Before: the server started, and a 3-image Score-CAM request on a server taking 2 in
    flight got 429 "retry in about 1 s" on every retry."""
    import argparse

    from kerascope.cli_serve import add_serve_command
    from kerascope.errors import CliError

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--allow-expensive", "--max-expensive-images", "3"])
    with pytest.raises(CliError, match="--max-expensive-images 3 is more than "
                       "--max-expensive-inflight 2, so a request of that many images could "
                       "never run"):  # fmt: skip
        args.func(args)


def test_max_body_mb_inf_is_one_line_not_a_traceback():
    """Before: OverflowError (int(inf * 1e6)) with a traceback, after loading the model."""
    done = subprocess.run(
        [sys.executable, "-m", "kerascope.serve", "--max-body-mb", "inf", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kerascope: error: --max-body-mb must be a finite number above 0, got inf"
    ]
