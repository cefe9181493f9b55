"""Counting XLA compilations as JAX itself logs them, for tests and benchmarks of "one compile
per shape": every compile is counted (initialisers, steps, forwards), not only the ones a
wrapper knows about."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class CompileCounter(logging.Handler):
    """Collects the names of JAX's "Compiling <name>" log records (one per XLA compilation)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Compiling "):
            self.names.append(text.split()[1])


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCounter]:
    """Turn on ``jax_log_compiles`` and collect the compilations made inside the block; the
    logger and the flag are put back afterwards (why: a test must not leave JAX logging)."""
    import jax

    counter = CompileCounter()
    logger = logging.getLogger("jax")
    level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.WARNING)
    jax.config.update("jax_log_compiles", True)
    try:
        yield counter
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(counter)
        logger.setLevel(level)
