"""Turn user inputs into validated ``(H, W, 3)`` uint8 RGB arrays.

classify, explain, features and training all load through here, so a bad file fails the
same way everywhere (an :class:`ImageError` naming the file, never a Pillow traceback) and
every pixel format reaches the model as 8-bit RGB, rescaled where Pillow would clip.

The package's parts, each importing only the ones before it: `colour` (pixel formats to RGB),
`geometry` (resize, fit), `decode` (files to arrays, safely), `inputs` (paths, folders, globs).
"""

from PIL import Image  # noqa: F401  (tests patch Pillow through kerascope.images.Image)

from kerascope.images.colour import (  # noqa: F401
    as_rgb_array,
    to_rgb,
)
from kerascope.images.decode import (  # noqa: F401
    _PIL_LIMIT_LOCK,
    DECODE_BUDGET,
    IMAGE_SUFFIXES,
    LIMIT_HINT,
    LINK_LOOP,
    MAX_PIXELS,
    ImageError,
    _PixelBudget,
    decode_image,
    file_problem,
    load_image,
    load_image_whole,
    max_pixels,
    max_row_pixels,
)
from kerascope.images.geometry import (  # noqa: F401
    fit,
    fit_box,
    resize,
)
from kerascope.images.inputs import (  # noqa: F401
    InputList,
    expand_inputs,
)
