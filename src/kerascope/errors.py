"""kerascope's exceptions: every error that means "the input or setup is wrong" is a
`KerascopeError`, whose message already says what to do. The CLI prints it as one line.

The classes live beside the code that raises them (`kerascope.images.ImageError`, ...); the
ones defined here have no better home. Where callers used to catch a builtin (``ValueError``,
``KeyError``, ``RuntimeError``), the class derives from that builtin too.
"""

from __future__ import annotations


class KerascopeError(Exception):
    """Base of kerascope's user-facing errors: the message tells the user what to fix."""


class CliError(KerascopeError):
    """A user-facing failure of the command line: printed as one line, exit code 2."""


class ConfigError(KerascopeError, ValueError):
    """A training setting that cannot be used (unknown recipe or optimizer, bad value)."""


class RunError(KerascopeError, ValueError):
    """A run directory that cannot be started or resumed (not a run, taken, finished)."""


class WeightsError(KerascopeError, RuntimeError):
    """Weights that cannot be found or fetched; the message says what to do.

    Here rather than in `zoo.weights` so that the weight-file readers (`zoo.torch_format`)
    need not import the cache code above them."""
