"""Keras 3 functional image models as ONNX graphs, for fast CPU inference with onnxruntime.

``graph`` holds the graph builder and shared helpers, ``layers`` the per-layer converters and
``export`` the walk over the Keras graph that ties them together; ``cache`` keeps converted
graphs on disk, keyed by converter version, model structure and weights; ``package`` turns a
converted classifier into a file to deploy (`kerascope export`: uint8 input, labels in metadata).
"""

from kerascope.onnx_export.export import CONVERTER_VERSION, keras_to_onnx, supports
from kerascope.onnx_export.graph import UnsupportedLayerError

__all__ = ["CONVERTER_VERSION", "UnsupportedLayerError", "keras_to_onnx", "supports"]
