"""``kerascope serve``: the web page and the HTTP API over loaded models.

``served`` loads the models and their batchers, ``batching`` gathers concurrent requests into
one forward pass, ``uploads``/``decode`` turn request bodies into pixels (never paths),
``limits`` caps what one client may cost (body, pixels, expensive methods, queue time),
``render`` draws explanations, ``app`` wires the routes, ``server`` binds the socket and runs
uvicorn, and ``connections`` gives uvicorn's connections their deadlines and a cap. The page
is plain HTML/CSS/JS in ``static/``, no build step.

Nothing heavy is imported here: FastAPI and uvicorn come with the ``serve`` extra and load only
when a server starts.
"""

from __future__ import annotations

__all__ = ["create_app", "load_served", "run_server"]


def __getattr__(name: str):
    if name == "create_app":
        from kerascope.serve.app import create_app

        return create_app
    if name == "load_served":
        from kerascope.serve.served import load_served

        return load_served
    if name == "run_server":
        from kerascope.serve.server import run_server

        return run_server
    raise AttributeError(f"module 'kerascope.serve' has no attribute {name!r}")
