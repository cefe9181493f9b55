"""A Ctrl-C that Python swallows still stops training (`kerascope.interrupts`).

Python raises a SIGINT's KeyboardInterrupt wherever the main thread is; inside a ``__del__``
or weakref callback (JAX and Keras free arrays through both) it prints "Exception ignored"
and goes on. A two-process run lost its Ctrl-C that way and trained on; here the signal is
sent from a finalizer, so it lands there every time.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import keras
import pytest

from kerascope import interrupts
from kerascope.report import read_history
from kerascope.testing import cat_and_coffee
from kerascope.training import train

# Each signal is sent in a child process: sent in the pytest worker, one that a library there
# had blocked or deferred could come out later, anywhere, and end the worker (xdist then
# waits for it). The child raises it to its own main thread (`signal.raise_signal`), inside
# a finalizer, so it lands there every time.
_CHILD = """
import signal, sys
from kerascope import interrupts
seen = []
sys.unraisablehook = lambda info: seen.append(type(info.exc_value).__name__)

class SendsCtrlCWhenFreed:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # handled here, in the finalizer

def ctrl_c_in_a_finalizer():
    SendsCtrlCWhenFreed()  # freed at once

def raised(call):
    try:
        call()
    except KeyboardInterrupt as stop:
        return type(stop).__name__
    return None
"""


def _child(body: str) -> list[str]:
    """Run ``body`` after `_CHILD` in a fresh interpreter; the lines it prints."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _CHILD + body], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again_by_check():
    lines = _child("""
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
ctrl_c_in_a_finalizer()  # Python's own handler: the Ctrl-C is lost
print("lost", raised(interrupts.check), seen)
with interrupts.interrupts_kept():
    print("nothing yet", raised(interrupts.check))
    ctrl_c_in_a_finalizer()
    print("again", raised(interrupts.check), raised(interrupts.check))  # kept to the end
print("after", raised(interrupts.check), seen)
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""")
    assert lines == ["True", "lost None ['KeyboardInterrupt']", "nothing yet None",
                     "again KeyboardInterrupt KeyboardInterrupt",
                     "after None ['KeyboardInterrupt']", "True"]  # fmt: skip
    # (within the block the swallowed stop is not reported as "Exception ignored": raised again)


def test_a_ctrl_c_outside_finalizers_raises_at_once_as_always():
    lines = _child("""
with interrupts.interrupts_kept():
    print(raised(lambda: signal.raise_signal(signal.SIGINT)))
print(raised(interrupts.check), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""")
    assert lines == ["KeyboardInterrupt", "None True"]


def test_another_handler_or_thread_is_left_alone(monkeypatch):
    """A caller's own Ctrl-C handler stays; off the main thread signals cannot be handled."""
    mine = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        with interrupts.interrupts_kept():
            assert signal.getsignal(signal.SIGINT) is not interrupts._on_signal
    finally:
        signal.signal(signal.SIGINT, mine)
    seen = []

    def in_thread() -> None:
        with interrupts.interrupts_kept():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_classify_and_explain_batches_stop_before_the_next_batch():
    """`kerascope.dispatch`'s loop (classify, explain) checks before it reads each batch."""
    lines = _child("""
from kerascope.dispatch import dispatch_ahead
started, given = [], []

def finish(batch, running):
    if batch == 1:
        ctrl_c_in_a_finalizer()
    return [batch]

def run():
    for item in dispatch_ahead(range(5), started.append, finish, ahead=False):
        given.append(item)

with interrupts.interrupts_kept():
    print(raised(run), started, given)
""")
    assert lines == ["KeyboardInterrupt [0, 1] [0, 1]"]


def test_training_stops_at_the_next_batch_after_a_swallowed_ctrl_c(tmp_path):
    """Before: the run trained all its epochs and finished. Now it stops after the next
    batch, saved as interrupted, as a Ctrl-C that was not swallowed does."""
    photos = cat_and_coffee(tmp_path / "photos", n=12, size=32)
    run = tmp_path / "run"
    lines = _child(f"""
import keras
from kerascope.training import train

class CtrlCInAFinalizerAt(keras.callbacks.Callback):  # at training batch 6: epoch 2
    begun = ended = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.begun += 1

    def on_train_batch_end(self, batch, logs=None):
        self.ended += 1
        if self.ended == 6:
            ctrl_c_in_a_finalizer()

sender = CtrlCInAFinalizerAt()
print(raised(lambda: train({str(photos)!r}, recipe="lenet", output={str(run)!r}, epochs=5,
                           batch_size=4, image_size=32, engine="keras", progress=False,
                           callbacks=[sender])), seen, sender.ended, sender.begun)
""")
    # 5 batches per epoch (20 images); the check runs before the sender at each batch end.
    # The swallowed stop is raised again, not reported as "Exception ignored" (seen: []).
    assert lines[-1] == "KeyboardInterrupt [] 6 7"
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1]
    assert json.loads((run / "run_state.json").read_text())["status"] == "interrupted"
    resumed = train(resume=Path(run), progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]


def test_sigterm_raises_terminated_and_an_ignored_sighup_stays_ignored():
    lines = _child("""
import pickle
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
with interrupts.interrupts_kept():
    print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)
    try:
        signal.raise_signal(signal.SIGTERM)
    except interrupts.Terminated as stop:
        print(isinstance(stop, KeyboardInterrupt), interrupts.exit_code(stop),
              interrupts.stopped_by(stop), pickle.loads(pickle.dumps(stop)).signum)
    print("kept", raised(interrupts.check))
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, raised(interrupts.check),
      interrupts.exit_code(KeyboardInterrupt()))
""")
    assert lines == ["True", "True 143 stopped by SIGTERM 15", "kept Terminated",
                     "True None 130"]  # fmt: skip


# The explain CLI in a child process, each picture slow to draw; a marker once 24 are drawn.
_SLOW_EXPLAIN = """
import runpy, sys, time
import kerascope.cam.save as s
marker, done, draw = sys.argv.pop(1), [0], s._draw_one
def slow_draw(*args, **kwargs):
    time.sleep(0.05)
    done[0] += 1
    if done[0] == 24:
        open(marker, "w").close()
    return draw(*args, **kwargs)
s._draw_one = slow_draw
runpy.run_module("kerascope", run_name="__main__")
"""


@pytest.mark.slow  # a CLI process (10-20 s)
def test_sigterm_in_explain_leaves_whole_pictures_and_says_how_many(tmp_path):
    """Before: SIGTERM killed explain at once, leaving hidden ``.partial`` pictures and no
    line; now the pictures in flight are finished, none is left half-written."""
    import subprocess
    import time

    from kerascope.testing import skimage_data

    photos = tmp_path / "photos"
    photos.mkdir()
    source = (skimage_data() / "chelsea.png").read_bytes()
    for i in range(150):
        (photos / f"cat{i:03d}.png").write_bytes(source)
    out, marker = tmp_path / "out", tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EXPLAIN, str(marker), "explain", str(photos), "-o",
         str(out), "-b", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "explain never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    said = [line for line in err.splitlines() if "stopped by SIGTERM after" in line]
    assert len(said) == 1 and f"the pictures of those explained are in '{out}'" in said[0], err
    n = int(said[0].split("after ")[1].split(" of 150")[0])
    written = sorted(p.name for p in out.iterdir())
    assert 0 < n <= len(written) < 150, (n, written)  # (pictures in flight: finished too)
    assert all(name.endswith("-output.jpg") for name in written), written  # no .partial


@pytest.mark.parametrize("epoch", [0, 1])
def test_train_stopped_says_what_a_resume_continues_from(tmp_path, capsys, monkeypatch, epoch):
    """Before: "the last finished epoch is saved", twice over, even when none had finished."""
    import kerascope.training.run as run_module
    from kerascope.cli import main

    class StopIn(keras.callbacks.Callback):
        def on_epoch_begin(self, index: int, logs=None) -> None:
            self.epoch = index

        def on_train_batch_end(self, batch: int, logs=None) -> None:
            if self.epoch == epoch:
                raise interrupts.Terminated(signal.SIGTERM)

    real = run_module._train

    def with_stop(run_dir, config, resumed, engine, progress, callbacks, *rest):
        return real(run_dir, config, resumed, engine, progress, [*(callbacks or []), StopIn()],
                    *rest)  # fmt: skip

    monkeypatch.setattr(run_module, "_train", with_stop)
    photos, run = cat_and_coffee(tmp_path / "photos", n=8, size=32), tmp_path / "run"
    code = main(["train", str(photos), "--recipe", "lenet", "--epochs", "3", "--image-size",
                 "32", "-o", str(run)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 143
    said = ("before the first epoch finished: nothing trained is saved; `kerascope train "
            f"--resume {run}` starts it again" if epoch == 0 else
            f"epoch 1 is saved; continue with `kerascope train --resume {run}`")  # fmt: skip
    assert [line for line in err.splitlines() if "SIGTERM" in line] == [
        f"stopped by SIGTERM: {said}"], err  # fmt: skip


_TWICE = """
import os, signal, time
from kerascope.interrupts import Terminated, interrupts_kept
with interrupts_kept():
    try:
        signal.raise_signal(signal.SIGTERM)
    except Terminated:
        print("first: stopping", flush=True)
        signal.raise_signal(signal.SIGTERM)  # a second one, while the first is handled
        time.sleep(30)
        print("still here", flush=True)
"""


def test_a_second_sigterm_ends_the_process_at_once():
    """The first SIGTERM stops the job in Python; a process stuck in C code never gets there,
    so a second SIGTERM ends it (before this change a single one did)."""
    import pickle
    import subprocess

    done = subprocess.run([sys.executable, "-c", _TWICE], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGTERM and done.stdout == "first: stopping\n", done
    copied = pickle.loads(pickle.dumps(interrupts.Terminated(signal.SIGHUP)))
    assert copied.signum == signal.SIGHUP and str(copied) == "SIGHUP"
