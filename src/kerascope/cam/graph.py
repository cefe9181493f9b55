"""The model's graph as explain sees it: nested models walked in place, the target layer found,
and the graph called again so the target's activations are reachable (and perturbable) from the
outer input.

Only the nested model that holds the target is inlined; every other nested model is called
whole, as one layer. Inlining all of them would put their layers side by side in one graph, and
two branches built from the same zoo network (an ensemble) have identically named layers, which
a Keras model refuses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from kerascope.errors import KerascopeError


class LayerError(KerascopeError, ValueError):
    """A target layer that does not exist or cannot carry a heatmap; names the candidates."""


def _functional(op: Any) -> Any:
    import keras

    if isinstance(op, keras.Sequential):
        return getattr(op, "_functional", None)
    return op if hasattr(op, "_nodes_by_depth") else None


def _nodes(fn: Any) -> Iterator[Any]:
    """Nodes of a functional graph in execution order (deepest first, as Keras runs them)."""
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for node in fn._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def _walk(model: Any) -> Iterator[tuple[Any, tuple]]:
    """(operation, output shape) of every call in ``model``, nested models expanded in place."""
    for op, shape, _ in _walk_named(model):
        yield op, shape


def _walk_named(model: Any, outer: str = "") -> Iterator[tuple[Any, tuple, str]]:
    """`_walk`, each call with the name of the nested model it runs in ("" at the top)."""
    fn = _functional(model)
    if fn is None:
        raise LayerError(
            f"model '{model.name}' is subclassed; heatmaps need a functional or Sequential model"
        )
    for node in _nodes(fn):
        if _functional(node.operation) is not None:
            yield from _walk_named(node.operation, node.operation.name)
        if len(node.outputs) == 1:
            yield node.operation, tuple(node.outputs[0].shape), outer


def candidate_layers(model: Any) -> list[str]:
    """Names of the layers with a 4-D (batch, height, width, channels) output, last first.

    A name that several nested models share (an ensemble's branches) is listed as
    ``"branch/layer"``, the form `find_layer` takes, so every listed name picks one layer.
    """
    calls = [(op.name, outer) for op, shape, outer in _walk_named(model) if len(shape) == 4]
    owners: dict[str, set[str]] = {}
    for name, outer in calls:
        owners.setdefault(name, set()).add(outer)
    names = [f"{outer}/{name}" if len(owners[name]) > 1 and outer else name
             for name, outer in calls]  # fmt: skip
    return list(dict.fromkeys(reversed(names)))


def branch_of(model: Any, target: Any) -> tuple[str, list[str]] | None:
    """``(the branch holding target, every branch)`` when ``model`` calls nested models side
    by side, neither feeding the other (an ensemble, whose maps each explain only their part of
    the prediction; behind a shared augmentation, or wrapped in one nested model), else None.
    Nested models only in a chain (augmentation -> backbone, ConvNeXt's stem -> stages) are no
    branches."""
    fn = _functional(model)
    nested = [n for n in _nodes(fn) if _functional(n.operation) is not None
              and any(len(shape) == 4 for _, shape in _walk(n.operation))]  # fmt: skip
    ancestors = {id(n): _ancestors(n) for n in nested}
    side = [n for n in nested
            if any(m is not n and id(m) not in ancestors[id(n)]
                   and id(n) not in ancestors[id(m)] for m in nested)]  # fmt: skip
    holds = [n for n in nested if any(op is target for op, _ in _walk(n.operation))]
    names = list(dict.fromkeys(n.operation.name for n in side))
    if len(names) > 1 and holds and holds[0] in side:
        return holds[0].operation.name, names
    return branch_of(holds[0].operation, target) if len(holds) == 1 else None


def _ancestors(node: Any) -> set[int]:
    """ids of the nodes ``node`` depends on, all the way up to the inputs."""
    seen: set[int] = set()
    stack = list(node.parent_nodes)
    while stack:
        parent = stack.pop()
        if id(parent) not in seen:
            seen.add(id(parent))
            stack.extend(parent.parent_nodes)
    return seen


def find_layer(model: Any, name: str | None = None) -> Any:
    """The layer whose activations are explained: ``name``, or the last spatial 4-D layer.

    "Last" is in execution order over the whole graph, inside nested models (a layer of the
    base rather than the base itself), preferring maps bigger than 1x1 (a 1x1 map cannot say
    where; inception at 75 px ends at 1x1). A nested model can still be named explicitly. A
    plain name found in several nested models means the last; ``"branch/layer"`` picks the one
    inside nested model ``branch`` (an ensemble's branches share their layer names).
    """
    if name is not None and "/" in name:  # Keras names cannot contain "/"
        outer, rest = name.split("/", 1)
        nested = [op for op, _ in _walk(model) if op.name == outer and _functional(op) is not None]
        if nested:
            return find_layer(nested[-1], rest)
    calls = list(_walk(model))
    spatial = [(op, s) for op, s in calls if len(s) == 4]
    if name is None:
        if not spatial:
            raise LayerError(f"model '{model.name}' has no layer with a 4-D spatial output")
        plain = [(op, s) for op, s in spatial if _functional(op) is None] or spatial
        wide = [op for op, s in plain if (s[1] or 2) * (s[2] or 2) > 1]
        return (wide or [op for op, _ in plain])[-1]
    found = [(op, s) for op, s in calls if op.name == name]
    if found and len(found[-1][1]) == 4:
        return found[-1][0]
    listed = candidate_layers(model)
    if found:
        reason = f"layer '{name}' has output shape {found[-1][1]}, not (batch, h, w, channels)"
    else:
        plain = name.rsplit("/", 1)[-1]
        near = set(difflib.get_close_matches(plain, [n.rsplit("/", 1)[-1] for n in listed], n=3))
        close = [n for n in listed if n.rsplit("/", 1)[-1] in near][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        reason = f"model '{model.name}' has no layer '{name}'{hint}"
    more = f", ... ({len(listed)} in all)" if len(listed) > 8 else ""
    raise LayerError(
        f"{reason}; layers that can carry a heatmap, last first: {', '.join(listed[:8])}{more}"
    )


def rebuild(
    model: Any, target: Any, delta: Any = None, replace: Any = None
) -> tuple[list, Any, Any]:
    """Call ``model``'s layers again on fresh inputs, the nested models holding ``target``
    inlined, so that the target layer's output becomes reachable from the outer input (and,
    with ``delta``, is replaced by ``output + delta``; with ``replace``, by that tensor, so the
    layers after the target can run on given activations). Other nested models are called whole
    (module docstring). Layers and weights are shared; the model is not changed.

    Returns:
        (new inputs, the target's output tensor, the model's first output tensor).
    """
    import keras

    fn = _functional(model)
    inputs = [keras.Input(shape=tuple(t.shape[1:]), name=t.name) for t in fn.inputs]
    found: list = []
    holds: dict[int, bool] = {}  # id(nested model) -> whether target is somewhere inside

    def inline(op: Any) -> bool:
        if id(op) not in holds:
            holds[id(op)] = any(inner is target for inner, _ in _walk(op))
        return holds[id(op)]

    def replay(fn: Any, values_in: list) -> list:
        values = {id(t): v for t, v in zip(fn.inputs, values_in, strict=True)}
        for node in _nodes(fn):
            op = node.operation
            if any(id(t) not in values for t in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(values)
            inner = _functional(op)
            if inner is not None and op is not target and inline(op):
                outs = replay(inner, [a for a in keras.tree.flatten(args) if a is not None])
            else:
                outs = keras.tree.flatten(op(*args, **kwargs))
            if op is target and not found:
                found.append(outs[0])
                if replace is not None:
                    outs = [replace]
                elif delta is not None:
                    outs = [keras.layers.Add(name="kerascope_cam_delta")([outs[0], delta])]
            for t, v in zip(node.outputs, outs, strict=True):
                values[id(t)] = v
        return [values[id(t)] for t in fn.outputs]

    outputs = replay(fn, inputs)
    if not found:
        raise LayerError(f"the prediction of '{model.name}' does not depend on '{target.name}'")
    return inputs, found[0], outputs[0]
