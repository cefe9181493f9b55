"""`import kerascope` leaves the process alone; kerascope's errors share one base the CLI prints."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from kerascope.cli import main
from kerascope.errors import CliError, ConfigError, KerascopeError, RunError
from kerascope.files import output_error

_DIFF = (
    "import json, os; before = dict(os.environ); {body}; "
    "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
)
_SETTINGS = ("KERAS_BACKEND", "JAX_", "TF_", "XLA_")


def _python(code: str, tmp_path, backend: str | None, lines: int = 1, **extra: str):
    """Run ``code`` in a fresh interpreter with none of the backend settings but ``backend``;
    its last line of output (the last ``lines`` lines, as a list, when more than one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS)}
    env["KERAS_HOME"] = str(tmp_path / "keras-home")  # no keras.json of the user's
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env.update(extra)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-lines:]
    return last if lines > 1 else last[0]


@pytest.mark.parametrize("backend", ["jax", "numpy", None])
def test_import_changes_no_environment_variable(tmp_path, backend):
    """After `import kerascope`, and after listing models and importing the CLI too (one
    interpreter: the first difference is printed before the rest runs)."""
    diff = "json.dumps(sorted(set(os.environ.items()) ^ set(before.items())))"
    more = "kerascope.list_models(); from kerascope import cli"
    code = _DIFF.format(body=f"import kerascope; print({diff}); {more}")
    after_import, after_all = _python(code, tmp_path, backend, lines=2)
    assert json.loads(after_import) == [] and json.loads(after_all) == []


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_keras_after_kerascope_runs_on_the_users_backend(tmp_path, backend):
    code = "import kerascope, keras; print(keras.config.backend())"
    assert _python(code, tmp_path, backend) == backend


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="Keras's default is usable"
)
def test_api_falls_back_to_jax_without_touching_the_environment(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    body = "from kerascope.config import ensure_backend; print(ensure_backend())"
    with ThreadPoolExecutor(2) as both:  # two interpreters at once: most of it is imports
        ours = both.submit(_python, _DIFF.format(body=body), tmp_path, None, lines=2)
        # No more than plain Keras on JAX changes by itself (JAX and Keras set a few TF_*, TPU_*)
        plain = json.loads(_python(_DIFF.format(body="import keras"), tmp_path, "jax"))
        backend, changed = ours.result()
    changed = json.loads(changed)
    assert changed == plain
    assert not any(k.startswith(("KERAS_BACKEND", "JAX_", "XLA_")) for k, _ in changed)
    assert backend == "jax"


def test_api_honours_the_backend_in_keras_json(tmp_path):
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "numpy"}))
    code = "from kerascope.config import ensure_backend; print(ensure_backend())"
    assert _python(code, tmp_path, None) == "numpy"


def test_cli_chooses_jax_and_the_compile_cache_for_its_own_process(tmp_path):
    code = (
        "import os; from kerascope.cli import main; main(['models', '-f', 'json']); "
        "print(os.environ['KERAS_BACKEND'], 'JAX_COMPILATION_CACHE_DIR' in os.environ)"
    )
    assert _python(code, tmp_path, None) == "jax True"
    assert _python(code, tmp_path, "numpy") == "numpy False"


def test_cli_imports_keras_without_its_optional_modules_which_load_later(tmp_path):
    """`import keras` loads pandas, matplotlib (pyplot included) and requests when installed
    (1.1 s of a one-photo classify); the command never hands Keras a DataFrame, asks it for a
    plot or posts to a monitor. The library's import stays Keras's own."""
    names = ("pandas", "matplotlib", "matplotlib.pyplot", "requests")
    loaded = f"print(sorted(m for m in {names} if m in sys.modules))"
    cli = (
        "import sys; from kerascope.config import configure_cli, ensure_backend; "
        f"configure_cli(); ensure_backend(); {loaded}; "
        "import matplotlib.pyplot as plt; plt.figure(); print(plt.get_backend() != ''); "
        "import requests; print(requests.__name__)"
    )
    assert _python(cli, tmp_path, "jax", lines=3) == ["[]", "True", "requests"]
    library = f"import sys; from kerascope.config import ensure_backend; ensure_backend(); {loaded}"
    installed = [m for m in names if importlib.util.find_spec(m.split(".")[0])]
    assert _python(library, tmp_path, "jax") == str(sorted(installed))


def test_the_command_collects_garbage_less_often_and_the_library_leaves_it_alone(tmp_path):
    """`kerascope` raises the collector's young-generation threshold for its own process
    (kerascope.config.GC_THRESHOLDS: `train` 17-22 % faster on small runs); a program that
    imports kerascope keeps Python's settings."""
    import gc

    from kerascope.config import GC_THRESHOLDS

    command = (
        "import gc, contextlib, io; from kerascope import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--version'])\n"
        "print(gc.get_threshold())"
    )
    assert _python(command, tmp_path, "jax") == str(GC_THRESHOLDS)
    library = "import gc, kerascope; from kerascope.config import ensure_backend; "
    library += "ensure_backend(); import kerascope.inference; print(gc.get_threshold())"
    default = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold())"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert _python(library, tmp_path, "jax") == default != str(GC_THRESHOLDS)
    assert gc.get_threshold() == GC_THRESHOLDS  # the suite runs as the command does (conftest)


def test_reports_draw_without_pyplot_and_leave_the_users_backend(tmp_path):
    """A program (a notebook) that picked its matplotlib backend keeps it after kerascope draws
    a run's curves, and pyplot is never imported."""
    png = tmp_path / "curves.png"
    code = (
        "import sys, matplotlib; matplotlib.use('pdf'); "
        "from kerascope.report import plot_curves; "
        "rows = [dict(epoch=e, loss=1.0 / e, val_loss=1.2 / e, accuracy=0.5 + e / 10, "
        "val_accuracy=0.4 + e / 10, lr=1e-3) for e in (1, 2, 3)]; "
        f"plot_curves(rows, {str(png)!r}); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    assert _python(code, tmp_path, "jax") == "pdf False"
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def _user_errors() -> list[type[BaseException]]:
    from kerascope.bottleneck import FeatureCacheError
    from kerascope.cam.base import LayerError, MethodError
    from kerascope.data.folders import DatasetError
    from kerascope.images import ImageError
    from kerascope.onnx_export.graph import UnsupportedLayerError
    from kerascope.video import VideoError
    from kerascope.zoo.models import ModelFileError
    from kerascope.zoo.registry import UnknownModelError
    from kerascope.zoo.weights import WeightsError

    return [
        FeatureCacheError, LayerError, MethodError, VideoError, DatasetError, ImageError,
        ModelFileError, UnknownModelError, WeightsError, UnsupportedLayerError, CliError,
        ConfigError, RunError,
    ]  # fmt: skip


def test_every_user_error_is_a_kerascope_error():
    for cls in _user_errors():
        assert issubclass(cls, KerascopeError), cls
    # Callers that caught the builtin still do.
    from kerascope.cam.base import LayerError, MethodError
    from kerascope.zoo.registry import UnknownModelError
    from kerascope.zoo.weights import WeightsError

    assert issubclass(LayerError, ValueError) and issubclass(MethodError, ValueError)
    assert issubclass(ConfigError, ValueError) and issubclass(RunError, ValueError)
    assert issubclass(UnknownModelError, KeyError) and issubclass(WeightsError, RuntimeError)
    assert str(UnknownModelError("unknown model 'x'")) == "unknown model 'x'"


def test_every_public_exception_class_of_kerascope_is_a_kerascope_error():
    import importlib
    import pkgutil

    import kerascope

    found = []
    for info in pkgutil.walk_packages(kerascope.__path__, "kerascope."):
        if info.name == "kerascope.__main__":
            continue
        module = importlib.import_module(info.name)
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == info.name
        ]
    found = [c for c in found if not c.__name__.startswith("_")]  # private control flow
    assert set(_user_errors()) <= set(found)
    # a stop by a signal is no error: it must pass every `except Exception` (Ctrl-C's path)
    stops = [c for c in found if issubclass(c, KeyboardInterrupt)]
    assert [c.__name__ for c in stops] == ["Terminated"]
    assert [c for c in found if not issubclass(c, KerascopeError) and c not in stops] == []


def test_train_resume_of_a_missing_run_is_one_line(tmp_path):
    missing = str(tmp_path / "nonexistent")
    done = subprocess.run(
        [sys.executable, "-m", "kerascope", "train", "--resume", missing],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kerascope: error: cannot resume")
    assert missing in lines[0]


@pytest.mark.parametrize(
    "exc, line",
    [
        (RunError("run 'r' already finished"), "run 'r' already finished"),
        (FileNotFoundError(2, "No such file or directory", "/x/[red]y"),
         "No such file or directory: '/x/[red]y'"),
        (PermissionError(13, "Permission denied", "/root/z"), "Permission denied: '/root/z'"),
        (CliError("two\nlines [/]"), "two\\nlines [/]"),
        (output_error("/x/[b]out.csv", OSError(errno.ENOSPC, "No space left on device")),
         "could not write '/x/[b]out.csv': no space left on the device; free some space and run "
         "again"),  # nothing is at that path: no "(any previous file is kept)"
    ],
)  # fmt: skip
def test_cli_prints_kerascope_and_file_errors_as_one_literal_line(monkeypatch, capsys, exc, line):
    import kerascope.cli_models

    def fail(args):
        raise exc

    monkeypatch.setattr(kerascope.cli_models, "_run_models", fail)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == f"kerascope: error: {line}\n"


def test_other_exceptions_still_show_their_traceback(monkeypatch):
    import kerascope.cli_models

    def fail(args):
        raise ValueError("a bug in kerascope")

    monkeypatch.setattr(kerascope.cli_models, "_run_models", fail)
    with pytest.raises(ValueError, match="a bug"):
        main(["models"])
