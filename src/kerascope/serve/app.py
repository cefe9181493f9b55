"""The ASGI app: JSON API under /v1 (OpenAPI at /v1/openapi.json), the web page at /.

Routes parse, hand pixels to the model's batcher and shape the answer; decoding and drawing run
on a thread pool, forward passes on the model's own threads (one per cost class), so the event
loop only moves bytes. Every failure a client can cause is a 4xx with ``{"error": "..."}``; a
server too busy to answer in time says 503 (or 429 for the expensive methods' quota) with
``Retry-After``. Each request is weighed in decoded pixels before anything is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from importlib import resources
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from kerascope import __version__
from kerascope.serve import schemas
from kerascope.serve.batching import hung_up, until_gone
from kerascope.serve.hosts import BrowserGuard, LoopbackHosts, SecurityHeaders
from kerascope.serve.limits import (
    MP,
    BodyLimit,
    BodyTimeout,
    BodyTooLarge,
    Busy,
    DescriptorLog,
    PixelBudget,
    PixelsTooMany,
    ServeLimits,
    shorten,
)
from kerascope.serve.pools import Lanes
from kerascope.serve.served import RequestError, ServedModel
from kerascope.serve.uploads import (
    data_url,
    decode_all,
    encode,
    failure,
    read_uploads,
    weigh,
)

STATIC = resources.files("kerascope.serve") / "static"
COLORMAPS = ("viridis", "jet", "hot", "gray")
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
ERRORS = {code: {"model": schemas.Error} for code in (400, 403, 404, 408, 413, 415, 422, 429, 503)}
CLOSE = {"Connection": "close"}  # the body was not read to its end: the connection cannot go on


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class _App(FastAPI):
    """FastAPI with `SecurityHeaders` around everything: Starlette runs the 500 handler, and
    so sends its answer, outside every middleware ``add_middleware`` adds."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def create_app(
    served: dict[str, ServedModel],
    max_body_mb: float = 20.0,
    limits: ServeLimits | None = None,
    loopback: bool = False,
) -> FastAPI:
    """The app serving ``served`` (first = default) under ``limits`` (default: `ServeLimits`
    with ``max_body_mb``, the cap on one request's body). ``loopback``: served on a loopback
    address, so it answers loopback names only (`kerascope.serve.hosts`).

    Example:
        >>> app = create_app(load_served(["efficientnet_lite0"]))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    if not served:
        raise ValueError("serve at least one model")
    default = next(iter(served))
    limits = limits or ServeLimits(max_body_mb=max_body_mb)
    limits.check()
    budget = PixelBudget(limits.max_request_mp * MP, limits.max_inflight_mp * MP)
    lanes = Lanes(limits.queue_timeout_s)  # decode and draw: light and heavy requests apart

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        DescriptorLog().install(asyncio.get_running_loop())
        yield
        for model in served.values():
            await model.close()
        lanes.shutdown()

    app = _App(
        title="kerascope",
        version=__version__,
        summary="Classify images and explain the predictions with class-activation heatmaps.",
        openapi_url="/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN: the server must work offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=int(limits.max_body_mb * MP),
        read_timeout=min(limits.read_timeout_s, limits.body_timeout_s),
        body_timeout=limits.body_timeout_s,
    )
    app.add_middleware(BrowserGuard)  # before any body is read
    if loopback:
        app.add_middleware(LoopbackHosts)  # added last: the outermost, before any body is read
    _add_handlers(app)

    def pick(name: str | None) -> ServedModel:
        key = name or default
        if key not in served:
            raise RequestError(
                f"unknown model {shorten(key)!r}; this server has: {', '.join(served)}", 404
            )
        return served[key]

    @app.get("/healthz", response_model=schemas.Health, tags=["server"])
    async def healthz():
        """Liveness, how well batching works (passes run, images carried) and the load now:
        images queued, running and refused, per model and per explain method."""
        stats = {k: m.stats() for k, m in served.items()}
        return {
            "status": "ok",
            "pixels_in_flight": budget.used,
            "decoding": lanes.stats(),
            "models": stats,
        }

    @app.get("/v1/models", response_model=schemas.ModelList, tags=["api"])
    async def models():
        """The models this server holds; the default answers requests that name none."""
        return {"default": default, "models": [_with_kinds(m.describe(k == default))
                                                for k, m in served.items()],
                "max_body_bytes": int(limits.max_body_mb * MP),
                "max_expensive_inflight": limits.max_expensive_inflight}  # fmt: skip

    @app.post(
        "/v1/classify",
        tags=["api"],
        openapi_extra={"requestBody": IMAGE_BODY},
        responses={200: {"model": schemas.ClassifyResponse}, **ERRORS},
    )
    async def classify(
        request: Request,
        top: int = Query(
            5,
            ge=1,
            le=1000,
            description="classes per image (a multi-label model: every label over its threshold)",
        ),
        threshold: float = Query(0.0, ge=0.0, le=1.0, description="hide classes below this"),
        model: str | None = Query(None, description="a name from /v1/models"),
        fit: str = Query(
            "crop",
            pattern="^(whole|crop)$",
            description="what the model sees: crop (the weights' own convention, as `kerascope "
            "classify`) or whole (the whole picture resized to its input, as explain's default "
            "--fit whole: the page sends the same fit to both, so classes and heatmap agree)",
        ),
    ):
        """Top-k classes of each image (multipart files, or the image as the body); for a
        multi-label run, every label whose probability reaches its threshold, with it.

        Results are `kerascope.classify`'s ``ImageResult``s; an unreadable image gets ``error``
        in place while the others are classified (4xx only when none could be).
        """
        from kerascope.cam.fitting import fit_convention
        from kerascope.classification import ImageResult, top_k
        from kerascope.zoo.sigmoid_heads import called

        served_model = pick(model)
        clf = served_model.clf
        uploads = await read_uploads(request)
        batcher = served_model.classifier
        loop = asyncio.get_running_loop()
        weighed = await loop.run_in_executor(lanes.headers, weigh, uploads, clf.input_size)
        budget.check_request(weighed.pixels, len(uploads))  # 413 before any wait
        gone = functools.partial(hung_up, request.receive)  # a waiter whose client left: out
        with contextlib.ExitStack() as held:  # pixels reserved once a decode slot is had:
            async with lanes.lane(weighed.work, "decoding this request", gone) as pool:  # (a
                held.enter_context(budget.reserve(weighed.pixels, len(uploads)))  # waiter: none)
                with batcher.expecting(len(uploads)):
                    items = await until_gone(request.receive, asyncio.ensure_future(decode_all(
                        uploads, clf.input_size, pool, False, fit_convention(clf, fit),
                        weighed=weighed)))  # fmt: skip
            good = [it for it in items if it.error is None]
            probs = await until_gone(request.receive, batcher.queued([it.pixels for it in good]))
        by_item = dict(zip(map(id, good), probs, strict=True))
        cuts = served_model.thresholds  # a multi-label run: as `kerascope classify --model RUN`

        def listed(probs):
            if cuts is None:
                return top_k(probs, clf.labels, top, threshold)
            return called(top_k(probs, clf.labels, clf.num_classes, threshold), cuts)

        results = [
            ImageResult(it.name, error=it.error)
            if it.error is not None
            else ImageResult(it.name, listed(by_item[id(it)]))
            for it in items
        ]
        rows = [dataclasses.asdict(r) for r in results]
        for shown in (p for row in rows for p in row["predictions"] if cuts is not None):
            shown["threshold"] = cuts[shown["index"]]
        body = {"model": served_model.key, "engine": served_model.engine,
                "precision": served_model.precision, "multilabel": cuts is not None,
                "results": rows}  # fmt: skip
        status, message = failure(items)
        if status != 200:
            return _error(status, message, **body)
        return JSONResponse(body)  # already plain JSON: skip jsonable_encoder

    @app.post(
        "/v1/explain",
        tags=["api"],
        openapi_extra={"requestBody": IMAGE_BODY},
        responses={
            200: {
                "model": schemas.ExplainResponse,
                "content": {"image/jpeg": {}, "image/png": {}},
                "description": "JSON, or with format=jpeg|png the overlay itself (one image); "
                "then the X-Kerascope-* headers carry the class and probability",
            },
            **ERRORS,
        },
    )
    async def explain(
        request: Request,
        method: str = Query(
            "gradcam",
            description="a method of /v1/models (gradcam, gradcam++, cam, ...); scorecam and "
            "other perturbation methods only on servers started with --allow-expensive",
        ),
        target: str | None = Query(
            None, alias="class", description="class to explain: name, WordNet id or index"
        ),
        model: str | None = Query(None, description="a name from /v1/models"),
        format: str = Query("json", pattern="^(json|jpeg|png)$", description="json|jpeg|png"),
        alpha: float = Query(0.4, ge=0.0, le=1.0, description="heatmap opacity at its peak"),
        colormap: str = Query("viridis", pattern="^(viridis|jet|hot|gray)$"),
        max_side: int = Query(
            1024,
            ge=0,
            le=8192,
            description="long side of the pictures; 0: full (every pixel counts twice against "
            "the pixel budget: decoded and drawn)",
        ),
        fit: str = Query(
            "whole",
            pattern="^(whole|crop)$",
            description="what the model sees: whole (the whole picture resized to its input; "
            "the heatmap covers it all) or crop (classify's centre crop, outlined; the rest "
            "untinted), as explain --fit",
        ),
    ):
        """Where the model looks: heatmap, class and probability for each image.

        JSON results are `kerascope.explain`'s ``Explanation``s (the heatmap as pictures:
        ``overlay``, the blended photo, and ``heatmap``, the coloured layer alone, as data URLs).
        """
        from kerascope.cam.fitting import fit_convention

        served_model = pick(model)
        clf = served_model.clf
        method = served_model.method(method)  # refused before the body is read
        from kerascope.cam.methods import check_class_choice

        try:  # eigencam with a class: its map is the same for every class
            check_class_choice(method, target)
        except ValueError as exc:
            raise RequestError(f"class: {exc}") from None
        class_index = served_model.resolve_class(target)
        uploads = await read_uploads(request)
        if format != "json" and len(uploads) != 1:
            raise RequestError(f"format={format} returns one picture; send one image or use json")
        batcher = served_model.explainer(method, len(uploads))
        loop = asyncio.get_running_loop()
        weighed = await loop.run_in_executor(
            lanes.headers, weigh, uploads, clf.input_size, True, max_side
        )
        budget.check_request(weighed.pixels, len(uploads))  # 413 before any wait
        gone = functools.partial(hung_up, request.receive)
        with contextlib.ExitStack() as held:  # held till the pictures are encoded
            async with lanes.lane(weighed.work, "decoding this request", gone) as pool:
                held.enter_context(budget.reserve(weighed.pixels, len(uploads)))
                with batcher.expecting(len(uploads)):
                    items = await until_gone(request.receive, asyncio.ensure_future(decode_all(
                        uploads, clf.input_size, pool, True, fit_convention(clf, fit),
                        max_side, weighed)))  # fmt: skip
            good = [it for it in items if it.error is None]
            outs = await until_gone(
                request.receive, batcher.queued([(it.pixels, class_index) for it in good])
            )
            # its model pass ran: drawing goes before requests still to decode, never refused
            async with lanes.lane(weighed.work, "drawing", gone, resume=True) as pool:
                return await answer(served_model, method, items, good, outs, pool,
                                    format, alpha, colormap, max_side, fit)  # fmt: skip

    async def answer(
        served_model,
        method,
        items,
        good,
        outs,
        pool,
        format,
        alpha,
        colormap,
        max_side,
        fit="whole",
    ):
        """The explain response: the pictures drawn on the pool, as JSON or one image."""
        import numpy as np
        from PIL import Image

        from kerascope.cam.explain import Explanation
        from kerascope.cam.fitting import (
            as_fractions,
            draw_outline,
            fit_convention,
            is_part,
            photo_outside,
            place,
        )
        from kerascope.images import fit_box
        from kerascope.serve.render import fit as fit_shown
        from kerascope.serve.render import render

        clf = served_model.clf
        loop = asyncio.get_running_loop()
        convention = fit_convention(clf, fit)
        boxes = {}

        def draw(it, heat):  # the map covers what the model saw (explain's rule, `cam.fitting`)
            shape = it.original.shape
            box = boxes[id(it)] = as_fractions(fit_box(shape, clf.input_size, convention), shape)
            over, layer = render(it.original, place(heat, box, shape), alpha, colormap, max_side)
            if not is_part(box, shape):
                return over, layer
            shown = Image.fromarray(fit_shown(it.original, max_side))  # a crop: photo outside it
            over = photo_outside(Image.fromarray(over), shown, box)
            clear = Image.new("RGBA", layer.size, (0, 0, 0, 0))
            return np.asarray(draw_outline(over, box)), draw_outline(
                photo_outside(layer, clear, box), box
            )

        drawn = await asyncio.gather(*(
            loop.run_in_executor(pool, draw, it, out[0]) for it, out in zip(good, outs, strict=True)
        ))  # fmt: skip
        done = {id(it): (out, pics) for it, out, pics in zip(good, outs, drawn, strict=True)}
        status, message = failure(items)
        if format != "json" and status == 200:
            (_, c, p), (over, _) = done[id(items[0])]
            picture = await loop.run_in_executor(pool, encode, over, format)
            wnid, name = clf.labels[c]
            headers = {"X-Kerascope-Class": quote(name), "X-Kerascope-Class-Id": quote(wnid),
                       "X-Kerascope-Class-Index": str(c), "X-Kerascope-Probability": f"{p:.6f}",
                       "X-Kerascope-Model": quote(served_model.key),
                       "X-Kerascope-Precision": served_model.explain_precision(method)}  # fmt: skip
            return Response(picture, media_type=f"image/{format}", headers=headers)

        def result(it) -> dict:
            if it.error is not None:
                return _explanation_dict(Explanation(it.name, error=it.error))
            (_, c, p), (over, layer) = done[id(it)]
            wnid, name = clf.labels[c]
            row = _explanation_dict(Explanation(it.name, None, c, wnid, name, p, fit=fit,
                                                box=boxes[id(it)], method=method))  # fmt: skip
            row.update(width=over.shape[1], height=over.shape[0])
            row.update(overlay=data_url(over, "jpeg"), heatmap=data_url(layer, "png"))
            return row

        rows = await loop.run_in_executor(pool, lambda: [result(it) for it in items])
        body = {
            "model": served_model.key,
            "method": method,
            "precision": served_model.explain_precision(method),
            "results": rows,
        }
        if status != 200:
            return _error(status, message, **body)
        return JSONResponse(body)  # already plain JSON: skip jsonable_encoder

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _explanation_dict(e) -> dict:
    """An `Explanation` as JSON: every field but the maps (sent as pictures), and ``label``,
    what explain's picture says of it (`kerascope.cam.labels.picture_label`: the class, or
    that the map is its shape only or about no class)."""
    from kerascope.cam.labels import picture_label

    maps = ("heatmap", "model_map")
    row = {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name not in maps}
    row["label"] = picture_label(e.class_name, e.probability, e.method) if e.ok else None
    return row


def _with_kinds(described: dict) -> dict:
    """``/v1/models``' entry with each method's ``class_independent`` (EigenCAM: the same map
    for every class, so a class is refused)."""
    from kerascope.cam.labels import is_class_independent

    for m in described["method_details"]:
        m["class_independent"] = is_class_independent(m["name"])
    return described


def _add_handlers(app: FastAPI) -> None:
    """Map every error a client can cause to a 4xx JSON ``{"error": ...}``."""

    @app.exception_handler(RequestError)
    async def _request_error(_request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request, exc: BodyTooLarge):
        return _error(413, str(exc), CLOSE)

    @app.exception_handler(BodyTimeout)
    async def _timeout(_request, exc: BodyTimeout):
        return _error(408, str(exc), CLOSE)

    @app.exception_handler(PixelsTooMany)
    async def _too_many_pixels(_request, exc: PixelsTooMany):
        return _error(413, str(exc))

    @app.exception_handler(Busy)
    async def _busy(_request, exc: Busy):
        return _error(exc.status, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def _gone(_request, _exc):
        return Response(status_code=499)  # nobody is listening; frees the request at once

    @app.exception_handler(HTTPException)
    async def _http(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):  # a server bug, not the client's: logged too
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(400, "; ".join(parts) or "invalid request")
