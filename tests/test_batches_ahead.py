"""kerascope.data.ahead.BatchesAhead: the trainers' batches made ahead on their own threads
(Keras's enqueuer waited 0.1 s at the end of every pass)."""

from __future__ import annotations

import threading
import time

import pytest

from kerascope.data.ahead import BatchesAhead


class Source:
    """Batches that say which version, index and thread made them; batch ``fail`` raises."""

    def __init__(self, length: int = 6, fail: int | None = None):
        self.length, self.fail, self.version = length, fail, 0
        self.made: list[tuple[int, int, str]] = []
        self.release = threading.Event()
        self.release.set()
        self.lock, self.entered = threading.Lock(), 0

    def make(self, index: int):
        with self.lock:
            self.entered += 1
        self.release.wait(10)
        if index == self.fail:
            raise OSError(f"batch {index} could not be read")
        self.made.append((self.version, index, threading.current_thread().name))
        return self.version, index


def test_reads_in_order_get_each_batch_once_made_ahead_on_the_pool():
    source = Source()
    ahead = BatchesAhead(source.make, lambda: source.length, threads=2, depth=3,
                         version=lambda: source.version)  # fmt: skip
    assert [ahead.get(i) for i in range(6)] == [(0, i) for i in range(6)]
    ahead.close()
    by_index = {index: thread for _, index, thread in source.made}
    assert sorted(index for _, index, _ in source.made) == list(range(6))  # each one once
    assert by_index[0] == threading.current_thread().name
    assert all(by_index[i].startswith("kerascope-batches") for i in range(1, 6))


def test_a_read_out_of_order_is_made_on_the_spot_and_starts_nothing():
    source = Source()
    ahead = BatchesAhead(source.make, lambda: source.length, threads=2, depth=3)
    assert ahead.get(4) == (0, 4)
    ahead.close()
    assert source.made == [(0, 4, threading.current_thread().name)]


def test_a_batch_of_another_epoch_is_never_returned():
    """Batches started ahead under epoch 0, then the epoch changes without a reset (a caller
    that moved the underlying sequence): the reads get epoch 1's batches."""
    source = Source()
    ahead = BatchesAhead(source.make, lambda: source.length, threads=2, depth=4,
                         version=lambda: source.version)  # fmt: skip
    assert ahead.get(0) == (0, 0)  # starts 1..4 under epoch 0
    source.version = 1
    assert [ahead.get(i) for i in range(6)] == [(1, i) for i in range(6)]
    ahead.close()


def test_reset_waits_for_the_batches_under_way_and_forgets_them():
    source = Source()
    ahead = BatchesAhead(source.make, lambda: source.length, threads=2, depth=2)
    source.release.clear()  # every make() waits until released
    reader = threading.Thread(target=ahead.get, args=(0,))
    reader.start()  # 0 made on the reader's thread, 1 and 2 on the pool's two
    deadline = time.monotonic() + 10
    while source.entered < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.entered == 3
    resetting = threading.Thread(target=ahead.reset)
    resetting.start()
    resetting.join(0.2)
    assert resetting.is_alive()  # 1 and 2 are under way: reset waits for them
    source.release.set()
    resetting.join(10)
    reader.join(10)
    assert sorted(index for _, index, _ in source.made) == [0, 1, 2]
    assert ahead.get(1) == (0, 1) and len(source.made) == 4  # forgotten: made again
    ahead.close()


def test_an_error_in_a_batch_made_ahead_is_raised_by_its_read():
    source = Source(fail=2)
    ahead = BatchesAhead(source.make, lambda: source.length, threads=2, depth=3)
    assert ahead.get(0) == (0, 0) and ahead.get(1) == (0, 1)
    with pytest.raises(OSError, match="batch 2 could not be read"):
        ahead.get(2)
    assert ahead.get(3) == (0, 3)  # the others still come
    ahead.close()


def test_threads_and_depth_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        BatchesAhead(lambda i: i, lambda: 3, threads=0, depth=2)
