"""`Explanation`: one input's heatmap and the class it explains, or why it was not explained
(`kerascope.explain` returns them; `kerascope.cam.explain` makes them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """One input: its heatmap and the class it explains, or why it could not be explained."""

    source: str
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1] at the image's resolution
    class_index: int | None = None
    class_id: str | None = None  # WordNet id for ImageNet models, the index for trained ones
    class_name: str | None = None
    probability: float | None = None
    error: str | None = None
    fit: str = "whole"  # what the model saw: the whole picture or its crop (`cam.fitting`)
    box: tuple[float, float, float, float] | None = None  # that part (`cam.fitting.Box`)
    method: str | None = None  # what drew the map: its picture's label names it
    model_map: np.ndarray | None = field(default=None, repr=False)
    """The map as the model computed it (feature or input resolution), before it was placed
    over the picture: what `kerascope.faithfulness` scores, so its numbers are this map's."""
    class_specific: bool | None = None
    """False for a class-independent method's map (EigenCAM: the same for every class), whose
    ``class_name`` is then the top class, which the map is not about; set from ``method``."""

    def __post_init__(self) -> None:
        if self.class_specific is None and self.ok and self.method:
            from kerascope.cam.labels import is_class_independent

            self.class_specific = not is_class_independent(self.method)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def empty(self) -> bool:
        """True when explained but the map is all zeros: no positive evidence for the class."""
        return self.ok and self.heatmap is not None and not np.any(self.heatmap > 0)

    def overlay(
        self, image: np.ndarray | None = None, alpha: float = 0.4, colormap: str | None = None
    ) -> np.ndarray:
        """The photo with the heatmap blended over it, (H, W, 3) uint8.

        Args:
            image: the (H, W, 3) RGB image explained; default: reloaded from ``source``.
            alpha: opacity at heat 1.
            colormap: default `kerascope.cam.overlay.DEFAULT_COLORMAP`.
        """
        from PIL import Image

        from kerascope.cam import overlay as overlay_module
        from kerascope.cam.fitting import photo_outside

        if not self.ok or self.heatmap is None:
            raise ValueError(f"no heatmap for '{self.source}': {self.error or 'not computed'}")
        image = self._image(image)
        colormap = colormap or getattr(overlay_module, "DEFAULT_COLORMAP", "jet")
        blended = overlay_module.overlay(image, self.heatmap, alpha, colormap)
        if self.box is None:
            return blended
        kept = photo_outside(Image.fromarray(blended), Image.fromarray(image), self.box)
        return np.asarray(kept)  # outside a crop: the photo, pixel for pixel

    def save(
        self,
        path: str | os.PathLike,
        image: np.ndarray | None = None,
        alpha: float = 0.4,
        colormap: str | None = None,
    ) -> Path:
        """Write original | overlay side by side under a label bar as JPEG, or PNG for a
        ``.png`` name (atomically), creating the folder if needed; never over the file
        explained. With ``fit="crop"`` the crop the model saw is outlined and the label says
        so (`kerascope.cam.fitting`)."""
        from PIL import Image

        from kerascope.cam.fitting import draw_outline, with_caption
        from kerascope.cam.labels import picture_label
        from kerascope.cam.overlay import picture_format, save_jpeg, side_by_side
        from kerascope.files import check_not_an_input, output_error

        fmt = picture_format(path)  # before: JPEG bytes under any name, a .png too
        check_not_an_input(path, [self.source], "the path")  # it replaced the photo explained
        image = self._image(image)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(path, exc) from exc
        blended = np.asarray(
            draw_outline(Image.fromarray(self.overlay(image, alpha, colormap)), self.box)
        )
        label = picture_label(self.class_name or "", self.probability, self.method)
        label = with_caption(label, self.box, image.shape)
        save_jpeg(side_by_side(image, blended, label), path, fmt=fmt)
        return Path(path)

    def _image(self, image: Any) -> np.ndarray:
        """The picture to draw on: ``image`` read as `kerascope.explain` reads its input (a
        float [0, 1] array was cast to uint8: a black picture), else the source reloaded."""
        from kerascope.sources import load_source

        if image is not None:
            return load_source(image)
        if not isinstance(self.source, str | os.PathLike) or not os.path.isfile(self.source):
            raise ValueError(f"'{self.source}' is not a file to reload; pass image=")
        return load_source(self.source)
