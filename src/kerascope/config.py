"""Backend choice and cache locations, decided before Keras is imported.

Importing kerascope changes nothing in the process. Two functions decide the backend:

* `ensure_backend` (the API): imports Keras on the user's backend, and only when nothing names
  one that can be imported (no ``KERAS_BACKEND``, no ``keras.json`` choice, Keras's own default
  TensorFlow not installed) on JAX. It leaves ``os.environ`` exactly as it found it.
* `configure_cli` (the ``kerascope`` command, which owns its process): JAX by default, quiet
  TensorFlow logging and a persistent JAX compilation cache, set as environment defaults.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kerascope.errors import ConfigError

# Keras 3's backends and the module each one imports first.
BACKENDS = {
    "jax": "jax",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}

# On CPU the JAX backend measured fastest for EfficientNet-Lite inference on the 2-core
# reference machine (see benchmarks/classify_cpu.py); JAX is also the GPU default.
DEFAULT_BACKEND = "jax"


def ensure_backend() -> str:
    """Import Keras on a usable backend and return its name; ``os.environ`` is left unchanged.

    The user's choice wins: ``KERAS_BACKEND``, a backend in Keras's ``keras.json`` other than
    its default TensorFlow, or Keras already imported. Only when Keras would fall back to
    TensorFlow and TensorFlow is not installed is Keras imported on `DEFAULT_BACKEND`; the
    variable is set just for that import (Keras reads it once), so the user's later code and
    child processes see the environment they set.
    """
    if "keras" not in sys.modules:
        fallback = _fallback_backend()
        with (
            _temporary_env("KERAS_BACKEND", fallback) if fallback else contextlib.nullcontext(),
            _modules_hidden(_HIDDEN_FROM_KERAS),
        ):
            import keras  # noqa: F401
    import keras

    return keras.config.backend()


# Modules that `import keras` loads when they are installed although Keras only needs them for
# work kerascope never gives it (pandas DataFrames, `keras.visualization`'s plots: matplotlib,
# pyplot included; `RemoteMonitor`'s HTTP posts: requests). The command line hides them from
# that import (`configure_cli`); the library never does.
_OPTIONAL_KERAS_IMPORTS = ("pandas", "matplotlib", "requests")
_HIDDEN_FROM_KERAS: tuple[str, ...] = ()


@contextlib.contextmanager
def _modules_hidden(names: tuple[str, ...]) -> Iterator[None]:
    """While inside, ``import name`` raises ImportError for each of ``names`` not yet imported.

    A ``None`` entry in ``sys.modules`` is Python's documented way to make an import fail; the
    entries are removed afterwards, so later imports (the reports' matplotlib) load them.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def _fallback_backend() -> str | None:
    """`DEFAULT_BACKEND` when Keras would otherwise pick TensorFlow and cannot import it."""
    if os.environ.get("KERAS_BACKEND"):
        return None
    if _keras_json_backend() not in (None, "tensorflow"):
        return None
    if importlib.util.find_spec("tensorflow") is not None:
        return None
    return DEFAULT_BACKEND


def _keras_json_backend() -> str | None:
    """The backend in Keras's config file (found as Keras finds it), or None."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json")) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


@contextlib.contextmanager
def _temporary_env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def configure_cli() -> str:
    """Process settings for the ``kerascope`` command; call before Keras is imported.

    Environment defaults only, so the user's own ``KERAS_BACKEND`` and ``JAX_*`` settings win.
    Never called by the library: a program that imports kerascope keeps its environment.

    Keras is imported without pandas, matplotlib and requests (`_OPTIONAL_KERAS_IMPORTS`): 1.1 s
    of the 4.3 s that ``kerascope classify`` of one photo took on the 2-core reference machine.
    """
    global _HIDDEN_FROM_KERAS
    _HIDDEN_FROM_KERAS = _OPTIONAL_KERAS_IMPORTS
    command_process_settings()
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    # Keras prints a line for every import of the TF-less JAX backend otherwise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["KERAS_BACKEND"] == "jax":
        _persistent_jax_cache()
    return os.environ["KERAS_BACKEND"]


# Python's cyclic garbage collector runs a young-generation pass every 700 container
# allocations by default; building Keras models and tracing JAX programs allocate millions, so
# the passes (and the older generations they trigger) took 7 % of the CPU of a test file that
# builds, compiles and explains models. 50,000 keeps collections regular, and rare.
GC_THRESHOLDS = (50_000, 20, 50)


def command_process_settings() -> None:
    """What the ``kerascope`` command sets for its own process: `fewer_collections` and
    `steadier_malloc`. Also called by kerascope's own worker processes (Ray actors, explain's
    picture processes) and the test suite; never by the library in the caller's process."""
    fewer_collections()
    steadier_malloc()


def fewer_collections() -> None:
    """Run the cyclic garbage collector less often (`GC_THRESHOLDS`), in this process only:
    the command line and the test suite call it, the library never does."""
    import gc

    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


def check_backend() -> str:
    """The CLI's backend, checked before Keras imports it: a bad one is one line, not a traceback.

    ``KERAS_BACKEND=torch`` without torch (or with a broken install) fails deep inside
    ``import keras``; importing the backend's module here first names the problem and the
    backends that are installed. Nothing to check once Keras is imported.
    """
    name = os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if "keras" in sys.modules:
        return name
    others = [b for b, module in BACKENDS.items() if b != name and _installed(module)]
    installed = ", ".join(others) or "none"
    if name not in BACKENDS:
        raise ConfigError(
            f"KERAS_BACKEND={name!r} is not a Keras backend; use one of: "
            f"{', '.join(BACKENDS)} (installed: {installed})"
        )
    try:
        importlib.import_module(BACKENDS[name])
    except (ImportError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        alternative = f", or use one of the installed backends: {installed}" if others else ""
        raise ConfigError(
            f"KERAS_BACKEND={name!r} cannot be used ({reason}); install {name}{alternative}"
        ) from None
    return name


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _persistent_jax_cache() -> None:
    """Keep XLA compilations across processes.

    Building a network on JAX compiles every weight initializer shape (~500 tiny programs for
    EfficientNet-Lite0): measured `kerascope classify` cold start 15-18 s without this cache,
    4.5-5 s with it. Users' own JAX_* settings win. A ``KERASCOPE_HOME`` that cannot hold it (a
    file, read-only) made JAX print a two-line warning on every run and compile cold: the cache
    then goes to `user_temp_dir`, or is left off when that is refused too.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        home = os.environ.get("KERASCOPE_HOME")
        base = Path(home).expanduser() if home else Path("~/.cache/kerascope").expanduser()
        folder = base / "jax-cache"
        if not _usable_folder(folder):
            try:
                folder = user_temp_dir() / "jax-cache"
            except OSError:
                return
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _usable_folder(folder: Path) -> bool:
    """Whether ``folder`` is, or could be made, a folder this process writes in: a stat and an
    access call when it exists (every run after the first); else it is made here, as JAX would
    make it at the first compilation (a missing folder's parent may refuse only the mkdir,
    /proc or a read-only mount seen by root)."""
    if os.path.isdir(folder):
        return os.access(folder, os.W_OK | os.X_OK) and not on_read_only_disk(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a file there or above it, a read-only disk, no permission
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def on_read_only_disk(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` lies on a file system mounted read-only (root passes ``os.access``)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def user_temp_dir() -> Path:
    """``$TMPDIR/kerascope-<uid>``, mode 0700: what a weights cache that cannot be used would
    hold (ported weights, JAX compilations), kept for later runs instead of redone each run.

    The temp folder is shared (/tmp), and weights or compiled programs read from it run in this
    process: a folder there that is a link, belongs to another user or that others may use is
    refused (OSError, saying why), never used.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"kerascope-{uid if uid is not None else 'user'}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode):
        raise OSError(errno.EEXIST, f"'{folder}' is not a folder (not used)")
    if uid is not None and found.st_uid != uid:
        raise OSError(errno.EPERM, f"'{folder}' belongs to another user (uid {found.st_uid}; "
                      "not used)")  # fmt: skip
    if uid is not None and found.st_mode & 0o077:
        raise OSError(errno.EPERM, f"'{folder}' is open to other users (mode "
                      f"{found.st_mode & 0o777:o}; not used)")  # fmt: skip
    return folder


def cache_dir() -> Path:
    """Where ported and downloaded weights live.

    ``KERASCOPE_HOME`` wins; otherwise Keras's own cache (``$KERAS_HOME/models`` or
    ``~/.keras/models``), so weights fetched by plain Keras are reused and vice versa.
    """
    if os.environ.get("KERASCOPE_HOME"):
        return Path(os.environ["KERASCOPE_HOME"]).expanduser()
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "models"


# glibc hands each allocation over its mmap threshold (128 KB at first) to mmap, and returns
# free memory at the top of a heap to the system past its trim threshold: a picture thread of
# `explain` allocates and frees a dozen Pillow images of 0.2-1.6 MB per photo, so each one was
# mapped, faulted in page by page and unmapped, with the GIL held (893 page faults and 0.4 ms
# of `free` per picture). Served from the heaps instead: 14 faults per picture.
MALLOC_SETTINGS = (("M_MMAP_THRESHOLD", -3, 32 << 20), ("M_TRIM_THRESHOLD", -1, 128 << 20))
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def steadier_malloc() -> bool:
    """Keep buffers up to 32 MB in glibc's heaps, and up to 128 MB free before giving memory
    back (`MALLOC_SETTINGS`), in this process only; whether it was applied. The command line
    and kerascope's own worker processes (Ray actors, explain's picture processes) call it; a
    program that imports kerascope never gets it unasked. Not glibc (musl, macOS, Windows), or
    the user's own ``MALLOC_*_`` / ``GLIBC_TUNABLES`` malloc settings: left alone."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(v) for v in _MALLOC_ENV):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for _, option, value in MALLOC_SETTINGS)
