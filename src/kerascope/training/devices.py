"""Training on several devices of a machine, and on several machines (issue 19).

Nothing here is home-made parallelism: the engine is Keras 3's distribution API.

* ``--devices all|N|0,2,5`` picks this machine's devices (:func:`select_devices`); with more
  than one, :func:`data_parallel` makes a ``keras.distribution.DataParallel`` over them the
  current distribution while the run's model is built and trained. Keras then replicates
  the variables on every device, splits each batch along its first axis and averages the
  gradients inside the compiled step. On a CPU-only machine JAX shows one device (unless
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` forces virtual ones).
* ``--coordinator HOST:PORT --num-processes N --process-id I`` (or Keras's own environment
  variables, :data:`ENV`) join the processes of a multi-machine run through
  ``keras.distribution.initialize`` (:func:`join_cluster`), before JAX starts. The mesh then
  holds every process's chosen devices; each process feeds only its rows of every global
  batch (:class:`ProcessShard`, cut after the batch is drawn, so augmentation and mixing are
  the single-process run's) and decodes and caches only those rows (its images are a
  ``FolderSequence(share=process_share())``: the other rows of its batches stay zeros, never
  read), and only process 0 writes the run directory
  (:func:`private_run_dir` gives the others a scratch copy). A process that stops before
  training, or fails during it, tells the others, which stop at once naming it and its
  reason (:mod:`kerascope.training.starting`; ``train`` is wrapped in :func:`refusals_told`,
  training in :func:`peers_watched`).
* The split trainer's frozen prefix runs on each of this process's devices for its shard
  when it runs on the JAX engine (``kerascope.training.split.prefix_forward``).

The learning-rate rule (:data:`LR_RULE`): ``--batch-size`` is the *global* batch, the one
optimizer step sees over all devices, and ``--lr`` applies to it unchanged. The same
settings therefore train the same model on 1 or 8 devices (tested on two virtual CPU
devices); a larger global batch for more devices is the user's choice, with its own rate.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope import interrupts
from kerascope.compile_cache import cache_in_every_process
from kerascope.config import ensure_backend

ensure_backend()
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.loader import DerivedSequence, fitted_batch, share_part  # noqa: E402
from kerascope.errors import ConfigError  # noqa: E402
from kerascope.training.same_run import (  # noqa: E402  (run.py calls them as placing.*)
    check_same_data,  # noqa: F401
    check_same_options,  # noqa: F401
    remember_processes,
)
from kerascope.training.scratch import (  # noqa: E402
    private_run_dir,  # noqa: F401  (run.py writes through it, as placing.private_run_dir)
    remove_scratch,
)
from kerascope.training.starting import (  # noqa: E402
    peers_watched as watched_by_peers,
)
from kerascope.training.starting import (  # noqa: E402
    refusals_told,  # noqa: F401  (run.py wraps train in it, as placing.refusals_told)
    start_together,  # noqa: F401  (run.py calls it, as placing.start_together)
)

LR_RULE = ("per global batch: --batch-size is the batch of one step over all devices (split "
           "evenly across them) and --lr applies to it unchanged, whatever the number of "
           "devices")  # fmt: skip

# Keras's own variables (keras.distribution.initialize reads them too): cluster launchers set
# them once for every command.
ENV = {
    "coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
}
TIMEOUT_ENV = "KERASCOPE_COORDINATOR_TIMEOUT"
CONNECT_TIMEOUT = 120.0  # seconds; below JAX's own 300 s, which aborts with a C++ trace
EXIT_NO_COORDINATOR = 3

DeviceSpec = str | int | Sequence[int] | None


def parse_devices(value: DeviceSpec) -> str | int | tuple[int, ...]:
    """``all`` (or None), a count ``N``, or device numbers ``0,2,5`` (a string or a list)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return "all"
    if isinstance(value, bool):
        raise ConfigError(f"--devices takes all, a count (2) or device numbers (0,2,5), got "
                          f"{value!r}")  # fmt: skip
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"--devices {value} is a count of devices: give at least 1, or "
                              f"all; to train on device {value} alone, give --devices "
                              f"{value}, (device numbers: 0, or 0,2,5)")  # fmt: skip
        return value
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            return parse_devices(int(text))
        if not re.fullmatch(r"\d+(\s*,\s*\d+)+|\d+\s*,", text):  # "0,": device 0 alone
            raise ConfigError(f"--devices takes all, a count (2) or device numbers (0,2,5), got "
                              f"{value!r}")  # fmt: skip
        value = [int(v) for v in text.split(",") if v.strip()]
    numbers = tuple(int(v) for v in value)
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"--devices {','.join(map(str, numbers))}: a device is named twice")
    if not numbers:
        raise ConfigError("--devices: name at least one device, or all")
    return numbers


def available_devices() -> list[Any]:
    """This process's devices of the default kind (accelerators when there are any)."""
    if keras.backend.backend() != "jax":
        return []
    import jax

    return list(jax.local_devices())


def select_devices(value: DeviceSpec) -> list[Any]:
    """The local devices ``value`` names, refused in one line when the machine lacks them."""
    spec = parse_devices(value)
    devices = available_devices()
    if not devices:  # another backend: one device, as Keras places it
        if spec not in ("all", 1, (0,)):
            raise ConfigError(f"--devices {_show(spec)}: training on several devices needs the "
                              f"JAX backend (this is {keras.backend.backend()}); set "
                              "KERAS_BACKEND=jax")  # fmt: skip
        return []
    kind = devices[0].platform.upper()
    have = f"this machine has {len(devices)} {kind} device(s), numbered 0-{len(devices) - 1}"
    if spec == "all":
        return devices
    if isinstance(spec, int):
        if spec > len(devices):
            raise ConfigError(f"--devices {spec}: {have}; give at most {len(devices)}, or all")
        return devices[:spec]
    missing = [n for n in spec if n >= len(devices)]
    if missing:
        raise ConfigError(f"--devices {_show(spec)}: no device {missing[0]} ({have})")
    return [devices[n] for n in spec]


def parallel_flags(devices: DeviceSpec) -> list[str]:
    """The flags that ask a trainer running on one device of one process (the multi-label
    CSV's) for more: ``--devices`` beyond one, ``--coordinator`` (a joined multi-process
    run), for it to refuse by name instead of ignoring them."""
    flags = [] if parse_devices(devices) in ("all", 1, (0,)) else ["--devices"]
    if keras.backend.backend() == "jax":
        import jax

        if jax.distributed.is_initialized() and jax.process_count() > 1:
            flags.append("--coordinator")
    return flags


def _show(spec: Any) -> str:
    return ",".join(map(str, spec)) if isinstance(spec, tuple) else str(spec)


@dataclass
class Placement:
    """Where a run trains: the mesh's devices (every process's), this process's place among
    the processes, and the Keras distribution (None on one device: Keras as before)."""

    devices: list[Any] = field(default_factory=list)
    processes: int = 1
    process_id: int = 0
    distribution: Any = None

    @property
    def count(self) -> int:
        return max(1, len(self.devices))

    def record(self, batch_size: int) -> dict[str, Any]:
        """What ``config.yaml`` and ``report.md`` say about it (not a setting of the run: a
        resume may use other devices); :func:`step_record` fits it to the training images."""
        return {
            "count": self.count,
            "names": [f"{d.platform}:{d.id}" for d in self.devices] or ["default"],
            "processes": self.processes,
            "per_device_batch": batch_size // self.count,
            "lr_rule": LR_RULE,
        }


def step_record(record: dict[str, Any], batch_size: int, images: int) -> dict[str, Any]:
    """``record`` with the images each device takes per step as the run feeds them: fewer
    training images than ``batch_size`` make a smaller step (``fitted_batch``; 4 images on 4
    devices: 1 each, not the 8 of a batch of 32)."""
    count = max(1, int(record.get("count") or 1))
    return {**record, "per_device_batch": fitted_batch(batch_size, images, count) // count}


def check_batch(batch_size: int, count: int) -> None:
    """A global batch that does not split evenly over the devices is refused in one line."""
    if batch_size % count:
        up = -(-batch_size // count) * count
        raise ConfigError(f"--batch-size {batch_size} does not split evenly over {count} "
                          f"devices: give a multiple of {count} (e.g. {up}), or fewer "
                          "--devices")  # fmt: skip


def mesh_devices(local: list[Any]) -> list[Any]:
    """Every process's devices at the positions this process chose among its own (all
    processes are started with the same ``--devices``), ordered by process."""
    import jax

    if jax.process_count() == 1:
        return local
    mine = jax.local_devices()
    positions = [mine.index(d) for d in local]
    by_process: dict[int, list[Any]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [group[p] for _, group in sorted(by_process.items()) for p in positions]


@contextlib.contextmanager
def data_parallel(value: DeviceSpec, batch_size: int) -> Iterator[Placement]:
    """The run's placement; with several devices (or processes) a ``DataParallel`` over
    them is Keras's current distribution inside the block (the model must be built in it)."""
    local = select_devices(value)
    if not local:
        yield Placement()
        return
    import jax

    devices = mesh_devices(local)
    check_batch(batch_size, len(devices))
    placement = Placement(devices, jax.process_count(), jax.process_index())
    if len(devices) == 1:
        with jax.default_device(devices[0]):
            yield placement
        return
    # each process feeds its own rows (ProcessShard): Keras's auto-sharding is tf.data's only
    placement.distribution = keras.distribution.DataParallel(devices=devices,
                                                             auto_shard_dataset=False)  # fmt: skip
    with placement.distribution.scope():
        yield placement


class ProcessShard(DerivedSequence):
    """This process's rows of every batch of ``batches`` (a device feed or prefix sequence):
    the whole batch is made as in a single-process run, then cut, so every random draw is
    the same (its images made with ``share``: only this part's pixels are read); Keras
    assembles the global batch from the processes' parts."""

    def __init__(self, batches: Any, index: int, count: int):
        super().__init__()  # read in order: ``batches`` makes the next ones ahead
        self.batches, self.images = batches, batches.images
        self.index, self.count = int(index), int(count)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()

    def make_batch(self, index: int) -> Any:
        return shard_rows(self.batches[index], self.index, self.count)


def shard_rows(batch: Any, index: int, count: int) -> Any:
    """Rows ``index``-th of ``count`` equal parts of every array in ``batch``."""
    if isinstance(batch, dict):
        return {k: shard_rows(v, index, count) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_rows(v, index, count) for v in batch)
    if batch is None:
        return None
    return np.asarray(batch)[share_part(len(batch), index, count)]


def process_share() -> tuple[int, int] | None:
    """``(process index, process count)`` in a multi-process run (the current distribution's),
    else None: what a ``FolderSequence(share=...)`` needs to decode only this process's rows."""
    distribution = keras.distribution.distribution()
    if distribution is None or distribution.num_processes == 1:
        return None
    import jax

    return jax.process_index(), jax.process_count()


def process_shard(batches: Any) -> Any:
    """``batches`` as this process feeds them: all of it alone, its shard among several."""
    share = process_share()
    return batches if share is None else ProcessShard(batches, *share)


def cluster_options(coordinator: str | None, num_processes: int | None,
                    process_id: int | None) -> tuple[str | None, int, int]:  # fmt: skip
    """The options, else Keras's environment variables, checked: one line when wrong."""
    coordinator = coordinator or os.environ.get(ENV["coordinator"]) or None
    num = _whole(num_processes, "num_processes")
    pid = _whole(process_id, "process_id")
    if coordinator is None:
        if num not in (None, 1) or pid not in (None, 0):
            raise ConfigError("--num-processes and --process-id need --coordinator HOST:PORT "
                              f"(or {ENV['coordinator']}): process 0's address")  # fmt: skip
        return None, 1, 0
    first = coordinator.split(",")[0].strip()  # Keras takes every job's address; 0's counts
    if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:.]+\]:\d{1,5}", first):
        raise ConfigError(f"--coordinator {coordinator!r}: give HOST:PORT, process 0's address "
                          "(e.g. 10.0.0.1:1234)")  # fmt: skip
    if num is None or num < 1:
        raise ConfigError("--coordinator needs --num-processes N (or "
                          f"{ENV['num_processes']}), at least 1")  # fmt: skip
    if pid is None:
        raise ConfigError(f"--coordinator needs --process-id I (or {ENV['process_id']}), "
                          f"0-{num - 1}")  # fmt: skip
    if not 0 <= pid < num:
        raise ConfigError(f"--process-id {pid} is out of range for --num-processes {num}: "
                          f"give 0-{num - 1} (0 is the coordinator)")  # fmt: skip
    return first, num, pid


def _whole(value: Any, name: str) -> int | None:
    if value is None:
        value = os.environ.get(ENV[name])
        if value is None or not str(value).strip():
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} (or {ENV[name]}) must be a whole number, got "
                          f"{value!r}") from None  # fmt: skip


def check_address(address: str, pid: int) -> None:
    """The coordinator's HOST:PORT checked at once: a port out of range, a name that does not
    resolve (every process waited its full timeout), and for process 0, which serves it on
    every interface (JAX binds ``[::]:PORT``: the address may be a NAT's or a service name), a
    port in use here."""
    import errno
    import socket

    host, _, port_text = address.rpartition(":")
    host, port = host.strip("[]"), int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"--coordinator {address}: the port must be 1-65535")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"--coordinator {address}: cannot resolve '{host}' ({reason}); give "
                          "process 0's address") from None  # fmt: skip
    if pid != 0:
        return
    for family, anywhere in ((socket.AF_INET, ""), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((anywhere, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--coordinator {address}: port {port} is in use on this "
                                  "machine; choose another port") from None  # fmt: skip
            if exc.errno == errno.EACCES:
                raise ConfigError(
                    f"--coordinator {address}: port {port} needs privileges "
                    "this process lacks; choose one above 1023"
                ) from None
            # no such family here (an IPv4- or IPv6-only host): nothing to check on it


def join_cluster(coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None,
                 timeout: float | None = None) -> tuple[int, int]:  # fmt: skip
    """Join a multi-process run through ``keras.distribution.initialize`` (once per process,
    before JAX computes anything); ``(process_id, num_processes)``, ``(0, 1)`` alone.

    A coordinator that does not answer within ``timeout`` seconds (default 120, or
    ``KERASCOPE_COORDINATOR_TIMEOUT``) ends the process with one line naming the address
    (JAX itself would wait 300 s and abort with a C++ stack trace), and so does Ctrl-C.
    """
    address, num, pid = cluster_options(coordinator, num_processes, process_id)
    if address is None or num == 1:
        return 0, 1
    check_address(address.split(",")[0].strip(), pid)
    import jax

    remember_processes(num)  # compared across the processes: JAX takes process 0's count
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV) or CONNECT_TIMEOUT)
    joined = threading.Event()

    def give_up() -> None:
        if joined.wait(timeout):
            return
        whom, start = ("the other processes did not all connect", "start every process "
                       f"with --coordinator {address}") if pid == 0 else (
            "the coordinator did not answer", "start process 0 there")  # fmt: skip
        sys.stderr.write(f"kerascope: error: {whom} at {address} within {timeout:g} s "
                         f"(process {pid} of {num}): {start} with the same --num-processes, "
                         f"check the address and that the port is open, or wait longer with "
                         f"{TIMEOUT_ENV}=SECONDS\n")  # fmt: skip
        sys.stderr.flush()
        os._exit(EXIT_NO_COORDINATOR)  # the connect is blocked in C++: no exception reaches it

    threading.Thread(target=give_up, daemon=True, name="kerascope-coordinator").start()
    cache_in_every_process()  # else process 0 alone writes JAX's compile cache
    waiting = "the coordinator" if pid else "the other processes"
    try:  # Ctrl-C ends the wait at once: JAX's C++ wait runs no Python signal handler
        with interrupts.ended_at_once(f"while waiting for {waiting} at {address}"):
            keras.distribution.initialize(address, num, pid)
    except RuntimeError as exc:
        raise ConfigError(f"cannot join the run at {address} as process {pid} of {num}: "
                          f"{str(exc).splitlines()[0]} (start every process before JAX "
                          "computes anything)") from None  # fmt: skip
    finally:
        joined.set()
    return pid, num


def reported(result: Any, run_dir: Path) -> Any:
    """A run's result naming the run directory process 0 writes, in every process."""
    import dataclasses

    if Path(result.run_dir) == Path(run_dir):
        return result
    return dataclasses.replace(result, run_dir=Path(run_dir),
                               model_path=Path(run_dir) / "model.keras")  # fmt: skip


def peers_watched(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Training watched in a multi-process run (:func:`kerascope.training.starting.peers_watched`);
    a process that ends itself removes its scratch copy (:func:`private_run_dir`) first."""
    return watched_by_peers(run_dir, remove_scratch)
