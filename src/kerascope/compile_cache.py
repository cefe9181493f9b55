"""JAX's persistent compilation cache in every process of a multi-process run, not only 0.

JAX writes compiled programs to its persistent cache from process 0 only (``jax._src.
compiler._cache_write``: many hosts writing one shared bucket contend). The other processes
still read it, but the programs they compile for their own devices have keys of their own,
which process 0 never writes: so every process but 0 recompiled everything at every start.
Measured for a 2-process ``train --recipe transfer`` (Lite0, 64 px, 2 epochs) on one 2-core
machine with a warm cache: process 0 10.3 CPU-s, process 1 24.6 (115 programs compiled,
none written), both processes waiting for the slower one.

kerascope's runs give each machine its own cache (``~/.cache/kerascope/jax-cache``, or
``$KERASCOPE_HOME/jax-cache``, unless ``JAX_COMPILATION_CACHE_DIR`` says otherwise:
`kerascope.config`), so the contention JAX avoids does not arise:
:func:`cache_in_every_process` lets this process write its own entries, through JAX's own
writer and with JAX's own rules (size and compile-time thresholds, no host callbacks).
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings

_EXPECTED = ["cache_key", "compile_time_secs", "module_name", "backend", "executable",
             "host_callbacks"]  # fmt: skip
_lock = threading.Lock()
log = logging.getLogger(__name__)


def cache_in_every_process() -> bool:
    """Make this process write its compilations to the persistent cache (idempotent).

    False, changing nothing, where JAX's private writer is not the one this was written
    against (another JAX version): that process then compiles as JAX decides.
    """
    try:
        from jax._src import compilation_cache, compiler, config, distributed
    except ImportError:
        return False
    with _lock:
        original = getattr(compiler, "_cache_write", None)
        if getattr(original, "kerascope_every_process", False):
            return True
        put = getattr(compilation_cache, "put_executable_and_time", None)
        threshold = getattr(config, "persistent_cache_min_compile_time_secs", None)
        try:
            fits = list(inspect.signature(original).parameters) == _EXPECTED
        except (TypeError, ValueError):
            fits = False
        if not (fits and callable(put) and threshold is not None):
            log.debug("JAX's cache writer changed: only process 0 writes the compile cache")
            return False

        def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                        host_callbacks):  # fmt: skip
            if (
                distributed.global_state.process_id == 0
                or host_callbacks
                or compile_time_secs < threshold.value
            ):  # JAX's own writer, or JAX's own reasons not to write
                return original(cache_key, compile_time_secs, module_name, backend,
                                executable, host_callbacks)  # fmt: skip
            try:
                put(cache_key, module_name, executable, backend, int(compile_time_secs))
            except Exception as exc:  # as JAX: a cache that cannot be written is not fatal
                warnings.warn(
                    f"Error writing persistent compilation cache entry for '{module_name}': "
                    f"{type(exc).__name__}: {exc}",
                    stacklevel=2,
                )

        cache_write.kerascope_every_process = True  # type: ignore[attr-defined]
        compiler._cache_write = cache_write
    return True
