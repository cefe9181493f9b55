"""Every process of a multi-process run writes JAX's persistent compile cache
(`kerascope.compile_cache`): JAX lets process 0 alone write it, so a 2-process run's process 1
recompiled its ~115 programs at every start (24.6 CPU-s against process 0's 10.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's compile cache")

# A process that JAX takes for process 1 of a run compiles one program into an empty cache.
_COMPILE_AS_PROCESS_1 = """
import pathlib, sys
import jax, jax.numpy as jnp
from jax._src import distributed
from kerascope.compile_cache import cache_in_every_process
folder = pathlib.Path(sys.argv[1])
jax.config.update("jax_compilation_cache_dir", str(folder))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
distributed.global_state.process_id = 1
if sys.argv[2] == "kerascope":
    assert cache_in_every_process() and cache_in_every_process()  # idempotent
jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(5.0)).block_until_ready()
print(sorted(p.name.split("-")[0] for p in folder.iterdir() if p.name.endswith("-cache")))
"""


@pytest.mark.parametrize("writer", ["jax", "kerascope"])
def test_a_process_other_than_0_writes_its_compilations(tmp_path: Path, writer: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    folder = tmp_path / "cache"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", _COMPILE_AS_PROCESS_1, str(folder), writer],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    written = done.stdout.strip().splitlines()[-1]
    # JAX's own writer skips process 1; with kerascope's, both programs are in the cache.
    assert written == ("['jit__lambda', 'jit_iota']" if writer == "kerascope" else "[]")
