"""What the `kerascope` command sets for its own process and a program importing kerascope
does not get: glibc's malloc thresholds (`kerascope.config.steadier_malloc`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from kerascope.config import steadier_malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

# explain's picture work in a thread (overlay, side by side, the bytes for the JPEG encoder) on
# the real cat photo; prints the page faults per picture.
PICTURES = """
import resource, threading
import numpy as np, skimage.data
from PIL import Image
from kerascope.cam.overlay import overlay_image, side_by_side_image

photo = Image.fromarray(skimage.data.chelsea())
heat = (np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)

def draw(n):
    for _ in range(n):
        side_by_side_image(photo, overlay_image(photo, heat), "tabby cat 50%").tobytes()

draw(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=draw, args=(40,))
thread.start()
thread.join()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""

COMMAND = """
import contextlib, io
from kerascope import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    cli.main(["--version"])
"""


def _faults_per_picture(prelude: str, env: dict | None = None) -> float:
    done = subprocess.run(
        [sys.executable, "-c", prelude + PICTURES],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", **(env or {})},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_the_command_keeps_picture_buffers_in_the_heaps():
    """glibc's defaults map, fault in and unmap each picture's Pillow buffers (0.2-1.6 MB) with
    the GIL held: ~850 page faults per picture here, 0.4 ms of `free`. The command's settings
    serve them from the heaps (~25); a program that imports kerascope keeps glibc's."""
    library = _faults_per_picture("import kerascope\n")
    command = _faults_per_picture(COMMAND)
    assert command < library / 5, (command, library)
    # the user's own malloc settings win over the command's
    mine = _faults_per_picture(COMMAND, {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert mine > command * 5, (mine, command)


def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    for name, value in (
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert steadier_malloc() is False
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # not malloc's: applied
    assert steadier_malloc() is True


def test_ray_actors_run_with_the_commands_settings(monkeypatch, tmp_path):
    """A Ray actor of `kerascope batch` is a process of kerascope's own: it sets what the
    command sets. The same worker called in-process leaves the caller's program alone."""
    from kerascope import config
    from kerascope.scale.work import BlockWorker

    calls = []
    monkeypatch.setattr(config, "command_process_settings", lambda: calls.append("settings"))
    job = {"task": "classify", "output": str(tmp_path), "settings": {"model": "no_such_model"}}
    assert BlockWorker(job).fatal  # the unknown model, reported as the worker's fatal error
    assert calls == []
    assert BlockWorker.for_actors(job)().fatal  # what Ray Data builds each actor from
    assert calls == ["settings"]


def test_explains_picture_processes_run_with_the_commands_settings():
    import gc

    from kerascope.cam.save import _process_pool
    from kerascope.config import GC_THRESHOLDS

    with _process_pool(1) as pool:
        assert pool.submit(gc.get_threshold).result(timeout=120) == GC_THRESHOLDS


def test_batch_workers_take_the_batch_size_rule_for_their_models_input(monkeypatch, tmp_path,
                                                                        lite0):  # fmt: skip
    """`kerascope batch` on a GPU: a 600-px model explains 16 images at a time, as `explain`
    does (before: 128 whatever the input, the size that overflowed an 80 GB GPU)."""
    import dataclasses

    from kerascope import batch_sizes
    from kerascope.scale.work import BlockWorker
    from kerascope.zoo import models

    big = dataclasses.replace(lite0, input_size=(600, 600))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: big)
    monkeypatch.setattr(batch_sizes, "device_kind", lambda: "gpu")
    job = {"task": "classify", "output": str(tmp_path), "settings": {"model": "big"}}
    worker = BlockWorker(job)
    assert worker.fatal is None and worker.batch_size == 32
    assert BlockWorker({**job, "batch_size": 5}).batch_size == 5  # -b wins
