"""Shared fixtures: real photos from scikit-image, a private weights cache per test session, one
JAX compilation cache kept between sessions, and NumPy-drawn random weights."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from . import scheduling

os.environ.setdefault("KERAS_BACKEND", "jax")  # plain `import keras` would default to TF

# A suite started in the background by a non-interactive shell (`make test &`) inherits SIGINT
# ignored, and so would every process a test starts: the Ctrl-C tests would then send a signal
# nobody receives. Python's own handler here means SIGINT is default again after their exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


_OWN_HOME: list[Path] = []  # the home this process created, if it did


def pytest_configure(config):
    """A fresh weights cache per session: exercises the port from the installed .pth packages
    and never touches the user's ~/.keras. Runs before kerascope (and Keras) are imported.

    XLA compilations, though, are kept in ``.pytest_cache/jax-cache`` across sessions (and for
    the subprocesses tests start): they depend only on the program, and recompiling every
    initializer and layer shape cost minutes per session. ``pytest --cache-clear`` empties it.
    """
    import sys
    import tempfile

    config.addinivalue_line(
        "markers", "keras_init: build models with Keras's initializers, not NumPy-drawn values"
    )

    # pytest-xdist workers inherit the controller's environment: they share its cache, so the
    # weights are ported and the ONNX graphs converted once per run, not once per worker
    shared = os.environ.get("KERASCOPE_TEST_HOME") if hasattr(config, "workerinput") else None
    home = Path(shared) if shared else Path(tempfile.mkdtemp(prefix="kerascope-test-home-"))
    if not shared:
        _OWN_HOME.append(home)  # removed when the session ends (pytest_unconfigure)
    os.environ["KERASCOPE_HOME"] = os.environ["KERASCOPE_TEST_HOME"] = str(home)
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        scheduling.snapshot(config, home)  # the workers order files by these seconds
        config.pluginmanager.register(scheduling.Recorder(), "kerascope-test-seconds")
        if hasattr(config.option, "loadscopereorder"):
            config.option.loadscopereorder = False  # xdist keeps heaviest_files_first's order
    os.environ["KERASCOPE_OFFLINE"] = "1"  # CI has no network; never try to download
    jax_settings = {
        "JAX_COMPILATION_CACHE_DIR": str(config.rootpath / ".pytest_cache" / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # the tiny programs are the point
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    for name, value in jax_settings.items():
        os.environ.setdefault(name, value)  # a developer's own JAX_* settings win
    from kerascope.config import command_process_settings

    # as the command line does: garbage collection (7 % less CPU on a model-building file) and
    # glibc's malloc
    command_process_settings()
    if "jax" in sys.modules:  # a plugin imported JAX first: it has read its environment already
        import jax

        env = os.environ
        jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
        )
        jax.config.update(
            "jax_persistent_cache_min_entry_size_bytes",
            int(env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
        )


def pytest_unconfigure(config):
    """The session's home goes with it, in the process that made it (the xdist controller, after
    its workers): ported weights, ONNX graphs and feature caches reach 2.3 GB in a full run, and
    were left in the temporary folder by every session (811 of them filled a 252 GB disk)."""
    import shutil

    while _OWN_HOME:
        shutil.rmtree(_OWN_HOME.pop(), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Heaviest files first (tests/scheduling.py): xdist's file-per-worker runs end together."""
    scheduling.heaviest_files_first(items)


@pytest.fixture(scope="session", autouse=True)
def numpy_init():
    """Every model the tests and their fixtures build gets its random weights from NumPy (same
    distributions as Keras's initializers): on JAX each new weight shape otherwise compiles its
    initializer, which was most of the suite's time (see kerascope.zoo.fast_init)."""
    from kerascope.zoo.fast_init import numpy_init

    with numpy_init():
        yield


@pytest.fixture(autouse=True)
def _keras_init_when_marked(request):
    """Tests marked ``keras_init`` get Keras's own initializers."""
    from kerascope.zoo.fast_init import keras_init

    marked = request.node.get_closest_marker("keras_init") is not None
    with keras_init() if marked else contextlib.nullcontext():
        yield


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="session")
def chelsea(skimage_data) -> np.ndarray:
    """A real photo (cat, 300x451) shipped with scikit-image."""
    from PIL import Image

    with Image.open(skimage_data / "chelsea.png") as img:
        return np.array(img.convert("RGB"))


@pytest.fixture(scope="session")
def photo_paths(skimage_data) -> dict[str, Path]:
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    return {n.split(".")[0]: skimage_data / n for n in names}


@pytest.fixture(scope="session")
def lite0():
    """The default model with real ported weights, built once per session."""
    from kerascope.zoo.models import load_model

    return load_model("efficientnet_lite0")


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    from kerascope.images import load_image, resize

    image = load_image(path)
    return resize(image, (size, size)) if size else image


# --- counting XLA compilations (tests of "one compile per shape") ---------------------------


@pytest.fixture
def jax_compiles():
    """JAX's own count of the XLA compilations made during the test (kerascope.testing)."""
    from kerascope.testing import count_compiles

    with count_compiles() as counter:
        yield counter


# --- one load of each zoo model for read-only commands run in-process ---------------------

_ZOO_MODELS: dict[str, object] = {}  # zoo name -> Classifier, loaded once per session


@pytest.fixture
def shared_zoo_models(lite0):
    """Commands run in-process (``cli.main``, ``run_batch``, ``validate`` ...) that load a zoo
    model by name get one session-wide load of it (real weights) instead of building it and
    reading its weights again: 2-5 s per command, most of an in-process CLI test's time.

    Each call returns its own `Classifier` (own ``extra``, so a ``precision`` stays with its
    command) around the shared Keras model; Lite0's is the session's `lite0` fixture's model.
    Only for read-only commands: never in tests that train, change weights, or check what
    loading itself prints or refuses (a file, other weights, or a name the zoo does not know
    still go to the real `load_model`).
    """
    import dataclasses
    import sys

    from kerascope.zoo import models, registry

    real = models.load_model
    _ZOO_MODELS.setdefault(lite0.name, lite0)

    def load_model(name_or_path=models.DEFAULT_MODEL, weights=None, precision=None):
        text = str(name_or_path)
        if precision is not None or weights is not None or text.endswith(".keras"):
            return real(name_or_path, weights, precision)  # precision: loads through this one
        if Path(text).exists():
            return real(name_or_path, weights)
        try:
            registry.get(text)
        except Exception:
            return real(name_or_path, weights)  # the real one-line refusal
        if text not in _ZOO_MODELS:
            _ZOO_MODELS[text] = real(text)
        base = _ZOO_MODELS[text]
        return dataclasses.replace(base, labels=list(base.labels), extra={})

    def rebind(old, new) -> None:  # and in the modules that bound it at import
        for name, module in list(sys.modules.items()):
            if name.startswith("kerascope") and getattr(module, "load_model", None) is old:
                module.load_model = new

    rebind(real, load_model)
    try:
        yield load_model
    finally:  # modules first imported during the test bound this one: they get the real one
        rebind(load_model, real)


@pytest.fixture(scope="session")
def lite0_server():
    """A real `kerascope serve` with its defaults (Lite0; batches of up to 32 gathered for up to
    5 ms), started once per session for the modules that only send it requests (test_serve_load,
    test_serve_browser): each start is a new interpreter plus a model load. Its base URL."""
    from tests.serve_server import running_server

    with running_server() as url:
        yield url


@contextlib.contextmanager
def cpu_without_bf16_units():
    """Auto's engine for bfloat16 on a CPU depends on its bf16 units (OpenVINO where it has
    them, the keras engine's mixed clone elsewhere): tests of the keras path pin the CPU to one
    without, so they test the same thing on an AMD EPYC with AVX512-BF16 as on one without."""
    from kerascope import engines

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engines, "cpu_native_bfloat16", lambda flags=None: False)
        yield


@pytest.fixture
def no_cpu_bf16():
    """`cpu_without_bf16_units` for one test."""
    with cpu_without_bf16_units():
        yield


@pytest.fixture
def reap():
    """The processes a test starts (multi-process tests): those still running at its end are
    killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _tiny_cam():
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny_cam")


@pytest.fixture(scope="session")
def tiny_cam_file(tmp_path_factory):
    """The tiny CAM model saved as .keras: for what takes a model file (the command line,
    serve, batch). Read only."""
    path = tmp_path_factory.mktemp("tiny_cam") / "tiny.keras"
    _tiny_cam().save(path)
    return path


@pytest.fixture(scope="module")
def tiny_clf():
    """A tiny CAM model (random weights, 32 px): for the tests of what explain and video
    write, which need pictures drawn, not a good model."""
    from kerascope.cam.base import as_classifier

    return as_classifier(_tiny_cam())


# The batch tests' run and pictures (tests/test_batch_integrity.py, test_batch_messages.py).
@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """An untrained LeNet run folder (32x32, two classes): cheap, and the same every time."""
    from tests.test_evaluate import untrained_run

    return untrained_run(tmp_path_factory.mktemp("lenet"), ["cat", "coffee"])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, skimage_data):
    """Five small crops of real photos (a cat, a cup of coffee, an astronaut)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    for i, (name, box) in enumerate([("chelsea.png", (0, 0, 200, 200)),
                                     ("chelsea.png", (100, 50, 300, 250)),
                                     ("coffee.png", (0, 0, 300, 300)),
                                     ("coffee.png", (200, 100, 500, 400)),
                                     ("astronaut.png", (100, 0, 400, 300))]):  # fmt: skip
        with Image.open(skimage_data / name) as img:
            img.convert("RGB").crop(box).resize((64, 64)).save(folder / f"p{i}.png")
    return folder
