"""The JSON the API returns, as pydantic models: they document the OpenAPI schema only.

Responses are built from the Python API's own dataclasses (`ImageResult`, `Prediction`,
`Explanation`, via ``dataclasses.asdict``), so a field added there shows up here as a test
failure (tests/test_serve.py compares the two), never as a silent difference.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="what was wrong with the request, in one line")


class Prediction(BaseModel):
    rank: int
    index: int = Field(description="output index of the class")
    class_id: str = Field(description="WordNet id for ImageNet models, the index for trained")
    name: str
    probability: float
    threshold: float | None = Field(
        None, description="a multi-label model only: the label's threshold (tuned on "
        "validation); the label is listed because its probability reaches it"
    )  # fmt: skip


class ImageResult(BaseModel):
    source: str = Field(description="the uploaded file's name, or <body> for a raw body")
    predictions: list[Prediction] = []
    error: str | None = Field(None, description="why this image could not be classified")


class ClassifyResponse(BaseModel):
    model: str
    engine: str = Field(description="onnx or keras: what ran the forward pass")
    precision: str = Field(
        "float32", description="what the forward pass computed in: float32, bfloat16, float16"
    )
    multilabel: bool = Field(
        False, description="a multi-label model: each image lists every label whose probability "
        "reaches the label's threshold (none, one or several; top is not used)"
    )  # fmt: skip
    results: list[ImageResult]


class ExplainResult(BaseModel):
    source: str
    class_index: int | None = None
    class_id: str | None = None
    class_name: str | None = None
    probability: float | None = None
    error: str | None = None
    fit: str | None = Field(None, description="what the model saw: whole or crop (the fit asked)")
    box: list[float] | None = Field(
        None, description="the part of the picture the model saw, (left, top, right, bottom) as "
        "fractions of its width and height; outlined on the pictures when it is not all of it"
    )  # fmt: skip
    method: str | None = Field(None, description="the method that drew the map")
    class_specific: bool | None = Field(
        None, description="false for a map that is the same for every class (eigencam): "
        "class_name is then the top class, which the map is not about"
    )  # fmt: skip
    label: str | None = Field(
        None, description="what the picture says of the map, class and probability first: "
        "'goldfish <0.01% (gradcam): map shape only' for a class the model all but rules out "
        "(every map is scaled to its own maximum), '... (eigencam: the layer's main component, "
        "not class-specific)' for a map that is the same for every class"
    )  # fmt: skip
    width: int | None = Field(None, description="size of overlay and heatmap, in pixels")
    height: int | None = None
    overlay: str | None = Field(None, description="data: URL, the photo with the heatmap over it")
    heatmap: str | None = Field(
        None, description="data: URL, PNG of the coloured heatmap alone, opacity = heat"
    )


class ExplainResponse(BaseModel):
    model: str
    method: str
    precision: str = Field("float32", description="what the maps were computed in")
    results: list[ExplainResult]


class MethodInfo(BaseModel):
    name: str = Field(description="the value of explain's method parameter")
    title: str = Field(description="the method's name for people")
    cost: str = Field(description="what one image costs (passes; time relative to Grad-CAM)")
    sanity: bool = Field(
        description="passes the weight-randomisation sanity check (Adebayo et al. 2018): false "
        "means the map may partly not depend on the model"
    )
    class_independent: bool = Field(
        False, description="the same map for every class (EigenCAM): a class is refused"
    )
    expensive: bool = Field(description="runs the model K times per image on this server")
    allowed: bool = Field(description="this server answers it (expensive ones: --allow-expensive)")


class ModelInfo(BaseModel):
    name: str
    default: bool
    input_size: list[int] = Field(description="(height, width) the model sees")
    num_classes: int
    engine: str
    precision: str = Field("float32", description="what classify computes in on this server")
    multilabel: bool = Field(False, description="one sigmoid per label, each called at its "
                             "own threshold (a run trained from a label CSV)")  # fmt: skip
    thresholds: dict[str, float] | None = Field(
        None, description="a multi-label model: each label's threshold, tuned on validation"
    )
    methods: list[str] = Field(description="explain methods this server answers for the model")
    expensive_methods: list[str] = Field(
        description="methods that run the model K times per image: their own queue and "
        "limits, answered only by servers started with --allow-expensive"
    )
    method_details: list[MethodInfo] = Field(
        description="every explain method the API knows, with its cost and sanity-check flag"
    )


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]
    max_body_bytes: int | None = Field(
        None, description="the largest request body this server takes (--max-body-mb): the "
        "page refuses a bigger file before sending it"
    )  # fmt: skip
    max_expensive_inflight: int | None = Field(
        None, description="images of the expensive methods a model takes at once, queued or "
        "running (--max-expensive-inflight; more are refused with 429): the page sends no more"
    )  # fmt: skip


class BatchStats(BaseModel):
    batches: int = Field(description="forward passes run for classify")
    items: int = Field(description="images they carried")
    largest: int = Field(description="largest batch so far")
    queued: int = Field(0, description="images waiting for a pass now")
    running: int = Field(0, description="images in the pass running now")
    refused: int = Field(0, description="images turned away: queue too long, or over a quota")


class ModelStats(BatchStats):
    explain: dict[str, BatchStats] = Field(
        {}, description="the same for each explain method used so far (its own queue)"
    )


class Health(BaseModel):
    status: str
    pixels_in_flight: int = Field(0, description="decoded pixels the requests now hold")
    decoding: dict[str, int] = Field(
        default_factory=dict,
        description="the heavy decode lane: requests decoding or drawing in it, waiting for it, "
        "and refused after --queue-timeout-s of waiting",
    )
    models: dict[str, ModelStats]
