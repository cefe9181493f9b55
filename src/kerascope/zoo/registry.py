"""Model specs: everything kerascope needs to know about a zoo model without building it.

A spec names its builder as a dotted string, so listing the zoo imports no network code. The
spec types and the table live in `zoo.specs`, below the modules that register the built-in specs.
"""

from __future__ import annotations

from kerascope.errors import KerascopeError
from kerascope.zoo.specs import (  # noqa: F401  (the types, importable from here as before)
    _ALIASES,
    _REGISTRY,
    PREPROCESS_MODES,
    InputConvention,
    ModelSpec,
    WeightsSource,
    _key,
    register,
)

_builtin_loaded = False


def _load_builtin() -> None:
    """Import the modules that register the built-in specs, once, whatever was imported first."""
    global _builtin_loaded
    if not _builtin_loaded:
        from kerascope.zoo import efficientnet_lite  # noqa: F401, I001  (default model first)
        from kerascope.zoo import applications  # noqa: F401

        _builtin_loaded = True


class UnknownModelError(KerascopeError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> ModelSpec:
    """Look a spec up by name, case-insensitively, or by its Keras class name."""
    _load_builtin()
    key = _key(name)
    if key not in _ALIASES:
        import difflib

        close = dict.fromkeys(
            _ALIASES[c] for c in difflib.get_close_matches(key, list(_ALIASES), n=9)
        )
        named = list(close)[:3]  # an alias and its name are one model, said once
        hint = f"; did you mean {', '.join(named)}?" if named else ""
        if "," in name:
            hint += " (one model here; the features recipe takes several)"
        raise UnknownModelError(f"unknown model '{name}'{hint} (`kerascope models` lists the zoo)")
    return _REGISTRY[_ALIASES[key]]


def known(name: str) -> bool:
    """Whether ``name`` is a zoo model's name or alias (case-insensitive)."""
    _load_builtin()
    return _key(name) in _ALIASES


def all_specs() -> list[ModelSpec]:
    """Every spec: kerascope's own builders first (the default Lite family), then the
    keras.applications ones, each in registration order, whichever module was imported first."""
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda s: not s.builder.startswith("kerascope."))
