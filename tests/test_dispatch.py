"""`kerascope.dispatch.dispatch_ahead`: the one loop that keeps a device one batch ahead."""

from __future__ import annotations

import pytest

from kerascope.dispatch import dispatch_ahead


def _run(batches, ahead=True, fail_start=None):
    events = []

    def start(b):
        events.append(("start", b))
        if b == fail_start:
            raise RuntimeError(f"cannot dispatch {b}")
        return b * 10

    def finish(b, running):
        events.append(("finish", b))
        yield running
        yield running + 1

    out = []
    try:
        for r in dispatch_ahead(batches, start, finish, ahead=ahead):
            out.append(r)
    except RuntimeError as exc:
        out.append(str(exc))
    return out, events


def test_ahead_starts_the_next_batch_before_it_finishes_one():
    out, events = _run([1, 2, 3])
    assert out == [10, 11, 20, 21, 30, 31]
    assert events == [("start", 1), ("start", 2), ("finish", 1), ("start", 3), ("finish", 2),
                      ("finish", 3)]  # fmt: skip


def test_without_ahead_each_batch_finishes_before_the_next_starts():
    out, events = _run([1, 2, 3], ahead=False)
    assert out == [10, 11, 20, 21, 30, 31]
    assert events == [("start", 1), ("finish", 1), ("start", 2), ("finish", 2), ("start", 3),
                      ("finish", 3)]  # fmt: skip
    assert _run([]) == ([], [])


def test_a_batch_started_is_given_out_before_the_next_ones_error():
    out, _ = _run([1, 2, 3], fail_start=3)
    assert out == [10, 11, 20, 21, "cannot dispatch 3"]

    def batches():  # reading the next batch fails (a decode pool that broke)
        yield 1
        raise RuntimeError("cannot read 2")

    out, _ = _run(batches())
    assert out == [10, 11, "cannot read 2"]


def test_the_consumer_may_stop_early():
    found = dispatch_ahead(iter([1, 2, 3]), lambda b: b, lambda b, r: iter([r]))
    assert next(found) == 1
    found.close()
    with pytest.raises(StopIteration):
        next(found)
