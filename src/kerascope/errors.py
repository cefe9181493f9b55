"""The exceptions that mean "the user's input or setup is wrong", shown as one line by the CLI."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure of the command line: printed as one line, exit code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Error types whose message already tells the user what to do (no traceback needed)."""
    from kerascope.bottleneck import FeatureCacheError
    from kerascope.cam.base import LayerError, MethodError
    from kerascope.data.folders import DatasetError
    from kerascope.images import ImageError
    from kerascope.video import VideoError
    from kerascope.zoo.models import ModelFileError
    from kerascope.zoo.registry import UnknownModelError
    from kerascope.zoo.weights import WeightsError

    return (
        FeatureCacheError,
        LayerError,
        MethodError,
        VideoError,
        DatasetError,
        ImageError,
        ModelFileError,
        UnknownModelError,
        WeightsError,
        FileNotFoundError,
    )
