"""Piped progress lines (issue 20 "Also", issue 24 item 5): once a job has run
`output.PLAIN_EVERY_S`, a plain line every `PLAIN_EVERY_S` and at each further 10 % of it.

A fake clock drives `output.progress_bar` (under pytest stderr is not a terminal, as in a
pipe), so the lines do not depend on this machine's speed. The CLI commands that use it
(classify, explain, --compare, video, predict) are run piped in tests/test_progress_lines.py.
"""

from __future__ import annotations

import re
import types

import pytest

from kerascope import output


@pytest.fixture()
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(output, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _run(clock, total: int, seconds_each: float) -> None:
    with output.progress_bar(total, "working") as advance:
        for _ in range(total):
            clock[0] += seconds_each
            advance(1)


def _lines(err: str) -> list[tuple[int, bool]]:
    found = re.findall(r"^kerascope: working: (\d+)/\d+, [\d.]+/s, \d+ s( \(done\))?$", err, re.M)
    return [(int(done), bool(end)) for done, end in found]


def test_a_line_per_10_percent_and_per_interval_after_the_first(clock, capsys):
    assert output.PLAIN_EVERY_S == 10.0
    _run(clock, 100, 0.5)  # 50 s: quiet for 10 s (item 20), then each 10 % and every 10 s
    lines = _lines(capsys.readouterr().err)
    assert lines == [(k, False) for k in (20, 30, 40, 50, 60, 70, 80, 90)] + [(100, True)]


def test_a_slow_job_still_prints_every_interval_between_steps(clock, capsys):
    _run(clock, 4, 25.0)  # 100 s, 25 s per item: each item is a step and an interval
    assert _lines(capsys.readouterr().err) == [(1, False), (2, False), (3, False), (4, True)]


def test_a_job_shorter_than_the_interval_prints_nothing(clock, capsys):
    _run(clock, 1000, 0.009)  # 9 s in all
    assert "working" not in capsys.readouterr().err
