"""Connect to Ray for ``kerascope batch --ray``, or say in one line why it cannot.

``ray.init`` given an address nothing answers at retries for minutes, printing only Ray's C++
warnings (about an address of its own: 127.0.0.1 becomes this machine's network address), and
an unknown host name is no quicker. So before it is called, a plain ``HOST:PORT`` (and the
client port of ``ray://HOST:PORT``, and what ``auto`` stands for) is looked up and tried with
a short TCP connection: an unknown name or nothing answering is one line within seconds that
names the address and what to do. Where Ray itself fails (authentication, a version mismatch),
the line keeps the cause Ray gives.

``--ray`` alone (`LOCAL`) uses the Ray cluster already running on this machine (the one
``ray start`` recorded, or ``RAY_ADDRESS``) when it answers, as ``ray.init()`` would, but
without asking it for CPUs (Ray refuses that); otherwise it starts a Ray instance of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from kerascope.scale.plan import BatchError

LOCAL = "local"  # --ray without an address: a Ray instance on this machine, all its CPUs
CONNECT_TIMEOUT_S = 5.0  # for the TCP connection that shows something listens
RESOLVE_TIMEOUT_S = 10.0  # for the name lookup (a resolver that does not answer)
CLIENT_PORT = 10001  # Ray Client's default port on the head (`ray start --head`)


def _otherwise(named_by: str) -> str:
    """The other way to run: a Ray instance on this machine (how depends on who named the
    address: the --ray option, or the RAY_ADDRESS variable)."""
    if named_by == "RAY_ADDRESS":
        return "or unset RAY_ADDRESS for a Ray instance on this machine"
    return "or use --ray without an address for a Ray instance on this machine"


@dataclass
class Connection:
    """What `connect` did: ``started`` when this call connected (so it shuts Ray down after);
    ``label`` says which Ray ran the job."""

    started: bool
    label: str


def connect(ray, cluster: str, env_vars: dict[str, str]) -> Connection:
    """Connect to (or start) the Ray ``cluster`` names; `BatchError` in one line if it cannot.

    Nothing is written anywhere before this returns (the caller writes its output after).
    """
    if ray.is_initialized():
        return Connection(False, "the Ray this program initialised")
    kwargs = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": env_vars},
    )
    if cluster == LOCAL:
        running = running_cluster()
        if running is None:
            _init(ray, "cannot start Ray on this machine", address=LOCAL,
                  num_cpus=os.cpu_count() or 1, **kwargs)  # fmt: skip
            return Connection(True, "a local instance started for this job")
        address, where = running
        label = f"the cluster already running {where} at {address}"
        _init(ray, f"cannot connect to {label}", address=address, **kwargs)
        return Connection(True, label)
    address = check_reachable(cluster)
    _init(ray, f"cannot connect to Ray at '{cluster}'", address=address, **kwargs)
    return Connection(True, cluster)


def running_cluster() -> tuple[str, str] | None:
    """The Ray that ``ray.init()`` without an address would join, when something answers
    there: ``RAY_ADDRESS`` (then it must answer: one line if not), else the cluster ``ray
    start`` last recorded on this machine (a stale record, of a cluster gone, is passed over).
    Its address and where it was found."""
    named = os.environ.get("RAY_ADDRESS", "").strip()
    if named.lower() == "local":  # Ray's own word for "start one here"
        return None
    if named:
        return check_reachable(named, "RAY_ADDRESS"), "(RAY_ADDRESS)"
    try:
        from ray._private.services import canonicalize_bootstrap_address

        recorded = canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001  (Ray's private helper: its absence or failure is "none")
        return None
    if not recorded:
        return None
    try:
        host, port = split_address(recorded)
        _answers(recorded, host, port, "")
    except BatchError:
        return None
    return recorded, "on this machine"


def check_reachable(cluster: str, named_by: str = "--ray") -> str:
    """The address to give ``ray.init`` for ``cluster``, once something answers at it."""
    if cluster.startswith("ray://"):
        _require_client(cluster)
        host, port = split_address(cluster[len("ray://") :], CLIENT_PORT, cluster)
        _answers(cluster, host, port, _start_client_hint(port, named_by), named_by)
        return cluster
    if "://" in cluster:  # another scheme a Ray plugin understands: left to Ray
        return cluster
    address = cluster
    if cluster == "auto":
        address = _auto(named_by)
    host, port = split_address(address, None, cluster)
    _answers(cluster, host, port, _start_hint(port, named_by), named_by)
    return address


def split_address(address: str, default_port: int | None = None, shown: str | None = None):
    """``HOST:PORT`` (``[IPv6]:PORT``) -> host and port; a missing or bad port is one line."""
    shown = shown or address
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:  # no port at all ('head', '[::1]')
        host, port = address, ""
    host = host.strip("[]")
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port:
        raise BatchError(f"Ray address '{shown}' needs a host and a port: HOST:PORT, as "
                         "`ray start --head` prints it (its port is 6379 by default)")  # fmt: skip
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BatchError(f"Ray address '{shown}' has no valid port ('{port}'): HOST:PORT")
    return host, int(port)


def _auto(named_by: str) -> str:
    """What ``auto`` stands for: ``RAY_ADDRESS``, else the cluster ``ray start`` recorded."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:  # "Could not find any running Ray instance"
        found = None
    except Exception:  # noqa: BLE001  (Ray's private helper changed: let ray.init decide)
        return "auto"
    if not found:
        by = "" if named_by == "--ray" else f" ({named_by})"
        why = ("no Ray cluster is running on this machine" if named_by == "RAY_ADDRESS" else
               "no Ray cluster is running on this machine and RAY_ADDRESS is not set")  # fmt: skip
        raise BatchError(f"cannot connect to Ray at 'auto'{by}: {why}; start one with "
                         f"`ray start --head`, {_otherwise(named_by)}")  # fmt: skip
    return found


def _answers(cluster: str, host: str, port: int, hint: str, named_by: str = "--ray") -> None:
    """Return once a TCP connection to ``host:port`` opens; else one line naming it."""
    said = f"cannot connect to Ray at '{cluster}'"
    said += f" ({named_by})" if named_by != "--ray" else ""
    try:
        infos = _resolve(host, port)
    except socket.gaierror as exc:
        raise BatchError(f"{said}: unknown host '{host}' ({exc.strerror or exc}); check the "
                         f"name, {_otherwise(named_by)}") from None  # fmt: skip
    except TimeoutError:
        raise BatchError(f"{said}: the name '{host}' was not resolved within "
                         f"{RESOLVE_TIMEOUT_S:.0f} s; check the name and this machine's DNS, "
                         f"{_otherwise(named_by)}") from None  # fmt: skip
    shown = f"{host}:{port}"
    why = f"'{host}' has no address"
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(CONNECT_TIMEOUT_S)
                s.connect(addr)
            return
        except ConnectionRefusedError:
            why = f"nothing listens at {shown} (connection refused)"
        except TimeoutError:
            why = f"nothing answered at {shown} within {CONNECT_TIMEOUT_S:.0f} s"
        except OSError as exc:
            why = f"{shown}: {exc.strerror or exc}"
    raise BatchError(f"{said}: {why}{'; ' + hint if hint else ''}")


def _resolve(host: str, port: int) -> list:
    """``getaddrinfo`` within `RESOLVE_TIMEOUT_S` (a silent resolver would hang the lookup)."""
    found: dict = {}

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001  (handed to the caller's thread)
            found["error"] = exc

    thread = threading.Thread(target=lookup, name="kerascope-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    if thread.is_alive():
        raise TimeoutError(host)
    if "error" in found:
        raise found["error"]
    return found["infos"]


def _start_hint(port: int, named_by: str) -> str:
    return (f"start Ray on that machine with `ray start --head --port {port}`, "
            f"{_otherwise(named_by)}")  # fmt: skip


def _start_client_hint(port: int, named_by: str) -> str:
    extra = "" if port == CLIENT_PORT else f" --ray-client-server-port {port}"
    return (f"that is the head's Ray Client port: start Ray on that machine with `ray start "
            f"--head{extra}`, {_otherwise(named_by)}")  # fmt: skip


def _require_client(cluster: str) -> None:
    """``ray://`` needs the Ray Client (grpcio), which ``ray[data]`` does not bring."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        pip = f"{shlex.quote(sys.executable)} -m pip install"
        raise BatchError(f"--ray {cluster} needs the Ray Client: pip install \"ray[client]\" "
                         f"(for this Python: {pip} \"ray[client]\"), or give the cluster's "
                         "HOST:6379 address instead") from None  # fmt: skip


# What Ray's C++ client repeats on stderr while ``ray.init`` retries an address (once a second,
# for 20 s when the cluster refuses its token): the one line that follows says why it failed.
RETRY_NOISE = (
    b"Failed to get cluster ID from GCS server",
    b"Failed to connect to GCS at address",
    b"Failed to connect to the observability pubsub",
)


def _init(ray, failed: str, **kwargs) -> None:
    """``ray.init(**kwargs)``; a failure is one line: ``failed``, then the cause Ray gives."""
    # Only while joining a running cluster: Ray processes started here would inherit the pipe
    joining = kwargs.get("address") != LOCAL
    before = descendants()
    try:
        with dropping_stderr_lines(RETRY_NOISE) if joining else contextlib.nullcontext():
            try:
                ray.init(**kwargs)
            except BaseException:  # Ctrl-C mid-start included: stop what was started
                _stop_started(ray, before)
                raise
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise BatchError(f"{failed}: {ray_cause(exc)}") from None
    except Exception as exc:  # Ray's own errors (AuthenticationError is a RayError)
        if type(exc).__module__.split(".")[0] != "ray":
            raise
        raise BatchError(f"{failed}: {ray_cause(exc)}") from None


def _stop_started(ray, before: set[int]) -> None:
    """After a ``ray.init`` that did not finish (Ctrl-C while a local Ray starts): shut down
    what Ray knows of, then end the processes it started meanwhile (its agents outlived the
    driver before): this process's descendants of Ray's that were not there before the call."""
    with contextlib.suppress(Exception):
        ray.shutdown()
    for pid in descendants() - before:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"ray" in fh.read():  # Ray's (gcs_server, raylet, ray::... agents)
                    os.kill(pid, signal.SIGKILL)


def descendants() -> set[int]:
    """The ids of this process's children, theirs, and so on (from /proc; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (name) "
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.+)$")
_AUTH = ("InvalidAuthToken", "AuthenticationError", "Unauthenticated")


def ray_cause(exc: BaseException) -> str:
    """The reason Ray gives for a failed ``ray.init``, on one line: the innermost
    ``SomeError: message`` of its chain (Ray wraps the cause as traceback text inside a
    RuntimeError, itself inside "Failed to connect to Ray cluster at ...")."""
    lines: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # outermost first, its text's lines in order
        seen.add(id(e))
        first, *rest = str(e).splitlines() or [""]
        lines += [f"{type(e).__name__}: {first}", *rest]
        e = e.__cause__ or e.__context__
    if any(word in line for line in lines for word in _AUTH):
        detail = next((m.group(2) for line in reversed(lines)
                       if (m := _ERROR_LINE.match(line)) and "Auth" in line), "")  # fmt: skip
        detail = detail.split(" Ensure ")[0].strip() or "its authentication token is wrong"
        return (
            f"the cluster refused this process's authentication ({detail}); run with "
            "RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or the file "
            "RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token by default)"
        )
    causes = [m for line in lines if (m := _ERROR_LINE.match(line))]
    inner = [m for m in causes if "Failed to connect to Ray cluster" not in m.group(2)]
    if inner:
        return f"{inner[-1].group(1)}: {inner[-1].group(2).strip()}"
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


@contextlib.contextmanager
def dropping_stderr_lines(needles: tuple[bytes, ...]) -> Iterator[None]:
    """Pass this process's stderr (file descriptor 2, where C++ code writes too) through a
    pipe that drops lines holding one of ``needles``; everything else is forwarded as is.

    Without a real descriptor 2 (captured by a test, say) nothing is filtered.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not any(needle in line for needle in needles):
                    with contextlib.suppress(OSError):
                        os.write(saved, line)

    thread = threading.Thread(target=pump, name="kerascope-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe ends once no process holds its writing end any more
        thread.join(timeout=5)
        if not thread.is_alive():
            os.close(saved)
