"""Heatmaps of a WordNet group ("cat", "dog", "vehicle"): the map of the group's own score.

A group is several ImageNet classes (`kerascope.zoo.hierarchy`). Its probability is the sum of
theirs, ``P_g = sum_{c in g} softmax(z)_c``; its score, as a class's score is its logit ``z_c``,
is the logit of the merged class: ``z_g = log sum_{c in g} exp(z_c)`` (softmax over ``z_g`` and
the other classes' logits gives exactly ``P_g``). So a group is explained by the classifier
whose classes are the group (output 0) and every class outside it, with that logit: every
method, path and picture of `explain` then works unchanged, and the label shows ``P_g``.

Why the merged logit and not the sum of probabilities or of logits: for a group of one class it
is that class's logit, so a group map is a class map generalised, not a different quantity; its
gradient is the probability-weighted mean of the members' logit gradients, so the members that
the model believes carry the map (a summed logit would weigh a 0.001 class like a 0.9 one);
and, unlike ``P_g``, it does not saturate (``dP_g`` vanishes as ``P_g`` nears 1) nor depend on
the classes outside the group (a class's map does not either).
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import numpy as np

from kerascope.zoo.hierarchy import (
    Group,
    GroupError,
    check_imagenet,
    close_matches,
    find_group,
    is_imagenet,
)
from kerascope.zoo.models import Classifier


@cache
def _layer_class() -> type:
    """The merge layer's class, defined once (Keras is imported only when a group is used),
    with its ONNX converter registered: the gradient-free methods run the network after the
    target layer on the CPU engine, which measured 11x faster than Keras-JAX for Score-CAM."""
    import keras

    class GroupLogits(keras.layers.Layer):
        """(N, classes) logits -> (N, 1 + others): the merged logit of ``members``, then the
        logits of ``others`` in order."""

        def __init__(self, members: list[int], others: list[int], **kwargs):
            super().__init__(**kwargs)
            self.members, self.others = list(members), list(others)

        def call(self, z):
            ops = keras.ops
            inside = ops.logsumexp(ops.take(z, self.members, axis=-1), axis=-1, keepdims=True)
            return ops.concatenate([inside, ops.take(z, self.others, axis=-1)], axis=-1)

        def compute_output_shape(self, shape):
            return (shape[0], 1 + len(self.others))

        def get_config(self):  # the classes are part of the structure (the ONNX cache key)
            return {**super().get_config(), "members": self.members, "others": self.others}

    from kerascope.onnx_export.graph import _CONVERTERS, _class_key

    def convert(g, layer, xs, args) -> str:
        def gather(indices: list[int]) -> str:
            return g.op("Gather", [xs[0].name, g.const(np.array(indices), np.int64)], axis=1)

        inside = g.op("ReduceLogSumExp", [gather(layer.members)], axes=[1], keepdims=1)
        return g.op("Concat", [inside, gather(layer.others)], axis=1)

    _CONVERTERS[_class_key(GroupLogits)] = convert
    return GroupLogits


def group_classifier(clf: Classifier, group: Group) -> Classifier:
    """``clf`` with ``group``'s classes merged into output 0 (module docstring); the other
    classes follow in order. Built once per group and cached on ``clf.extra``."""
    import keras

    from kerascope.cam.base import analyse_head

    check_imagenet(clf.labels, f"model '{clf.name}'")
    cache = clf.extra.setdefault("groups", {})
    if group.wnid in cache:
        return cache[group.wnid]
    model = clf.model
    head = analyse_head(None, model.outputs[0])
    if head.activation != "softmax":
        raise GroupError(f"model '{clf.name}' has no softmax output; groups sum probabilities")
    logits = head.score_input
    if head.kind == "dense":  # the Dense carries the softmax: its logits as a tensor of their own
        dense = keras.layers.Dense(head.kernel.shape[1], name="kerascope_group_dense")
        logits = dense(logits)
        dense.set_weights([head.kernel, head.bias])
    members = list(group.classes)
    inside = set(members)
    others = [c for c in range(clf.num_classes) if c not in inside]
    merged = _layer_class()(members, others, name="kerascope_group_logits")(logits)
    out = keras.layers.Softmax(name="kerascope_group_softmax")(merged)
    wrapped = keras.Model(model.inputs, out, name=f"{model.name}_group")
    labels = [(group.wnid, group.name), *(clf.labels[c] for c in others)]
    cache[group.wnid] = dataclasses.replace(clf, model=wrapped, labels=labels, extra={})
    return cache[group.wnid]


def class_or_group(clf: Classifier, target: Any) -> tuple[Classifier, Any]:
    """``(clf, target)`` as it was, unless ``target`` names a group of an ImageNet model (any
    WordNet ancestor name or wnid of its classes: ``cat``, ``dog``, ``vehicle``, not itself a
    class): then ``(the merged classifier of `group_classifier`, 0)``. Another lemma of one
    class ("Tinca tinca") becomes that class's index. A name that is neither a class nor a
    group raises a one-line `GroupError` with close matches."""
    if not isinstance(target, str) or not is_imagenet(clf.labels):
        return clf, target
    from kerascope.zoo.imagenet import _by_name, _normalise, resolve_class

    try:
        resolve_class(target)
        return clf, target  # a class: resolved as before, by the caller
    except ValueError as exc:
        found = find_group(target)
        if found is None:
            raise GroupError(
                f"unknown ImageNet class or group {target!r}{close_matches(target)}"
            ) from None
        if found.is_class:  # another lemma of one class, unless it is an ambiguous class name
            if _normalise(target) in _by_name():
                raise exc from None
            return clf, resolve_class(found.wnid)
        return group_classifier(clf, found), 0
