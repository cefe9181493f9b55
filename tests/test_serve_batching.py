"""The serve batcher and the expensive queue, in process (no server): requests that arrive
together share one pass, a pass counts only what is left of it, a failure reaches the
requests it belongs to."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve tests need the serve extra (fastapi)")


def test_batcher_gathers_concurrent_requests():
    from kerascope.serve.batching import DynamicBatcher

    seen: list[int] = []

    def double(xs):
        seen.append(len(xs))
        time.sleep(0.02)
        return [x * 2 for x in xs]

    async def scenario(max_batch):
        batcher = DynamicBatcher(double, pool, max_batch=max_batch, max_wait_ms=20)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return out

    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(scenario(4)) == [2 * i for i in range(10)]
        assert seen == [4, 4, 2]
        seen.clear()
        assert asyncio.run(scenario(1)) == [2 * i for i in range(10)]
        assert seen == [1] * 10


def test_batcher_waits_only_for_requests_on_their_way():
    from kerascope.serve.batching import DynamicBatcher

    seen: list[int] = []

    def double(xs):
        seen.append(len(xs))
        return [x * 2 for x in xs]

    async def lone():  # nothing else announced: no waiting for max_wait_ms
        batcher = DynamicBatcher(double, pool, max_batch=8, max_wait_ms=2000)
        start = time.perf_counter()
        assert await batcher.submit(1) == 2
        await batcher.close()
        return time.perf_counter() - start

    async def announced():  # one queued, two still decoding: they share its pass
        batcher = DynamicBatcher(double, pool, max_batch=8, max_wait_ms=2000)

        async def late(x):
            with batcher.expecting(1):
                await asyncio.sleep(0.05)
            return await batcher.submit(x)

        out = await asyncio.gather(batcher.submit(1), late(2), late(3))
        await batcher.close()
        return out

    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(lone()) < 1.0
        seen.clear()
        assert asyncio.run(announced()) == [2, 4, 6]
        assert seen == [3]


def test_batcher_counts_only_what_is_left_of_the_running_pass(monkeypatch):
    """A 2 s pass, 1.5 s into the next: a request with a 1 s queue limit starts in 0.5 s, so it
    is queued (it was refused: the running pass counted in full). The clock is the test's."""
    from kerascope.serve import batching
    from kerascope.serve.limits import Busy

    clock = [100.0]
    monkeypatch.setattr(batching.time, "perf_counter", lambda: clock[0])
    gate = threading.Event()

    def run(xs):
        gate.wait(30)
        gate.clear()
        return xs

    async def until(condition):
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the batcher did not get there")

    async def scenario():
        b = batching.DynamicBatcher(run, pool, max_batch=2, max_wait_ms=0, queue_timeout=1.0)
        first = asyncio.ensure_future(b.submit(0))
        await until(lambda: b.stats()["running"] == 1)
        clock[0] = 102.0  # the first pass took 2 s
        gate.set()
        assert await first == 0
        clock[0] = 200.0
        second = asyncio.ensure_future(b.submit(1))
        await until(lambda: b.stats()["running"] == 1)
        clock[0] = 201.5
        waits = [b.expected_wait()]
        queued = b.enqueue([2, 3, 4])  # not refused: 0.5 s < 1 s
        waits.append(b.expected_wait())  # then two passes of 2 items: 0.5 + 2 x 2 s
        with pytest.raises(Busy, match="about 4 s of work queued"):
            b.enqueue([5])
        for _ in range(3):  # the second pass, then the queued ones
            gate.set()
            await until(lambda: not gate.is_set())
        assert await second == 1 and [await f for f in queued] == [2, 3, 4]
        await b.close()
        return waits

    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(scenario()) == pytest.approx([0.5, 4.5])


def test_a_failing_method_in_the_expensive_queue_fails_its_own_requests_only():
    """The expensive methods share one queue: a pass holding scorecam and a method this model
    cannot build gave scorecam's request the other's 400."""
    from types import SimpleNamespace

    from kerascope.serve.served import MethodQueue, RequestError, ServedModel

    def explain(method, items):
        if method == "bad":
            raise RequestError("this model cannot", 400)
        return [(method, target) for _, target in items]

    fake = SimpleNamespace(_explain=explain)
    items = [("scorecam", None, 1), ("bad", None, 2), ("scorecam", None, 3)]
    out = ServedModel._explain_each(fake, items)
    assert out[0] == ("scorecam", 1) and out[2] == ("scorecam", 3)

    class Batcher:  # the shared queue, as `DynamicBatcher.queued` hands out the rows
        def queued(self, payloads):
            done = asyncio.get_running_loop().create_future()
            done.set_result(ServedModel._explain_each(fake, payloads))
            return done

    assert asyncio.run(MethodQueue(Batcher(), "scorecam").run_all([(None, 5)])) == [
        ("scorecam", 5)]  # fmt: skip
    with pytest.raises(RequestError, match="this model cannot"):
        asyncio.run(MethodQueue(Batcher(), "bad").run_all([(None, 6)]))


def test_batcher_hands_a_failure_to_every_request_of_the_batch():
    from kerascope.serve.batching import DynamicBatcher

    def fail(xs):
        raise ValueError("model broke")

    async def scenario():
        batcher = DynamicBatcher(fail, pool, max_batch=8, max_wait_ms=10)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.close()
        return out

    with ThreadPoolExecutor(1) as pool:
        assert [str(e) for e in asyncio.run(scenario())] == ["model broke"] * 3


# --- the queue deadline, in isolation ------------------------------------------------------


def test_batcher_refuses_what_waited_past_its_deadline():
    from kerascope.serve.batching import DynamicBatcher
    from kerascope.serve.limits import Busy

    def slow(xs):
        time.sleep(0.6)
        return xs

    async def scenario():
        batcher = DynamicBatcher(slow, pool, max_batch=1, max_wait_ms=0, queue_timeout=0.3)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(Busy) as waited:
            await batcher.submit(2)  # behind a 0.6 s pass: refused at 0.3 s
        refused_after = time.monotonic() - start
        assert await first == 1
        with pytest.raises(Busy) as estimated:  # the pass time is known now: refused at once
            batcher.enqueue([3])
            batcher.enqueue([4])
        await batcher.close()
        return waited.value, refused_after, estimated.value

    with ThreadPoolExecutor(1) as pool:
        waited, refused_after, estimated = asyncio.run(scenario())
    assert 0.25 < refused_after < 0.55 and waited.status == 503 and waited.retry_after >= 1
    assert "queue limit" in str(estimated)


def test_a_client_that_hangs_up_leaves_the_queue_at_once():
    """Before: a reloaded page's queued Score-CAMs kept their places (429 for the page's next
    request) until their passes ran, ~40 s; now `until_gone` takes them out when the client
    hangs up, and the quota is free for the next request."""
    from starlette.requests import ClientDisconnect

    from kerascope.serve.batching import DynamicBatcher, until_gone
    from kerascope.serve.limits import Busy

    release = threading.Event()

    def slow(xs):
        release.wait(30)
        return list(xs)

    async def scenario():
        logged: list = []  # "exception was never retrieved" for each hang-up (the review's find)
        asyncio.get_running_loop().set_exception_handler(lambda _, context: logged.append(context))
        batcher = DynamicBatcher(slow, pool, max_batch=1, max_items=2, busy_status=429)
        running = asyncio.ensure_future(batcher.submit("running"))
        while batcher.stats()["running"] == 0:
            await asyncio.sleep(0.01)
        hung_up = asyncio.Event()

        async def receive():  # the ASGI receive after the body: a disconnect, when it comes
            await hung_up.wait()
            return {"type": "http.disconnect"}

        gone = asyncio.ensure_future(until_gone(receive, batcher.queued(["abandoned"])))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="the most this server takes at once is 2"):
            batcher.enqueue(["refused"])  # one running + one queued: full
        hung_up.set()
        with pytest.raises(ClientDisconnect):
            await gone
        assert batcher.stats()["queued"] == 0
        later = asyncio.ensure_future(batcher.submit("later"))  # its place is free
        release.set()
        assert await running == "running" and await later == "later"
        hung_up.clear()  # a client that stays: its answer, as without the watch
        answered = await until_gone(receive, batcher.queued(["answered"]))
        await batcher.close()
        import gc

        gc.collect()
        return answered, logged

    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(scenario()) == (["answered"], [])


def test_a_watched_request_joins_the_batch_forming_for_it():
    """The review's find: wrapped in a task, a request announced by `expecting` was queued a
    loop turn late (Python 3.12+), after the forming batch had left without it: [1, 1]."""
    from kerascope.serve.batching import DynamicBatcher, until_gone

    seen: list[int] = []

    def run(xs):
        seen.append(len(xs))
        return list(xs)

    async def never():
        await asyncio.Event().wait()

    async def scenario():
        batcher = DynamicBatcher(run, pool, max_batch=8, max_wait_ms=2000)

        async def request(x, delay):
            with batcher.expecting(1):
                await asyncio.sleep(delay)  # decoding
            return await until_gone(never, batcher.queued([x]))

        out = await asyncio.gather(request("a", 0), request("b", 0.05))
        await batcher.close()
        return out

    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(scenario()) == [["a"], ["b"]]
    assert seen == [2]
