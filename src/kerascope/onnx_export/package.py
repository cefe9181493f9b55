"""Turn a converted graph into a file to hand to someone else: stable names, the input type the
user chose, and what is needed to use it (labels, input size) in ``metadata_props``.

The converter's graph (``keras_to_onnx``) is what kerascope's own CPU engine runs: float32 input
named after the Keras input layer. A deployed file is read by other programs, so its interface
is fixed here: one input ``image`` (N, H, W, 3) RGB 0..255, uint8 or float32, and one output
``probabilities`` (N, classes), with the batch dimension dynamic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kerascope.errors import KerascopeError

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
RESIZE = (
    "antialiased Pillow Image.resize(filter, box, reducing_gap=3.0) to input_size; 'fit' says "
    "which filter and whether the centre is cropped first (kerascope.images.fit)"
)


class InterfaceError(KerascopeError, ValueError):
    """The graph does not look like an image classifier (one image in, one vector out)."""


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename value ``old`` everywhere in ``graph`` (node inputs and outputs, graph I/O)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def package(
    onnx_bytes: bytes,
    input_type: str,
    labels: Sequence[tuple[str, str]],
    input_size: tuple[int, int],
    metadata: dict[str, str] | None = None,
    convention: Any = None,
) -> Any:
    """The deployable ``ModelProto`` of a converted classifier.

    Args:
        onnx_bytes: what ``keras_to_onnx`` returned for the classifier.
        input_type: ``"uint8"`` (cast to float inside the graph) or ``"float32"``.
        labels: ``(id, name)`` per output index (WordNet id for ImageNet models).
        input_size: ``(height, width)`` the images must be resized to.
        metadata: more ``metadata_props`` entries (strings).
        convention: how pictures are fitted to ``input_size`` (an ``InputConvention``; None:
            squash, bilinear), recorded as the ``fit`` entry so a runtime without kerascope
            feeds what kerascope feeds.

    Raises:
        InterfaceError: not one 4-D input and one 2-D output of ``len(labels)`` classes.
    """
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_from_string(onnx_bytes)
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.input[0].type.tensor_type.shape.dim) != 4:
        raise InterfaceError("the model must take one image input (N, H, W, 3)")
    dims = graph.output[0].type.tensor_type.shape.dim if len(graph.output) == 1 else []
    if len(dims) != 2 or dims[1].dim_value != len(labels):
        raise InterfaceError(f"the model must have one output of {len(labels)} class scores")
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    _rename(graph, graph.input[0].name, INPUT_NAME)
    if input_type == "uint8":
        cast = f"{INPUT_NAME}/float"  # "/" never appears in the converter's Keras-derived names
        for node in graph.node:
            node.input[:] = [cast if n == INPUT_NAME else n for n in node.input]
        graph.node.insert(0, helper.make_node("Cast", [INPUT_NAME], [cast], to=TensorProto.FLOAT))
        graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    elif input_type != "float32":
        raise ValueError(f"input type must be uint8 or float32, not {input_type!r}")
    height, width = input_size
    props = {
        "input_size": json.dumps([int(height), int(width)]),
        "input_dtype": input_type,
        "input_layout": "NHWC, RGB, 0..255",
        "resize": RESIZE,
        "fit": json.dumps(
            {
                "resize": getattr(convention, "resize", "squash"),
                "crop_fraction": float(getattr(convention, "crop_fraction", 1.0)),
                "interpolation": getattr(convention, "interpolation", "bilinear"),
            }
        ),
        "classes": json.dumps([name for _, name in labels], ensure_ascii=False),
        "class_ids": json.dumps([str(i) for i, _ in labels], ensure_ascii=False),
        **(metadata or {}),
    }
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"Image classifier: input '{INPUT_NAME}' ({input_type}, N x {height} x {width} x 3, RGB "
        f"0..255), output '{OUTPUT_NAME}' (N x {len(labels)}). Labels and input size are in "
        "metadata_props (classes, class_ids, input_size)."
    )
    return proto
