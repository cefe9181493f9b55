"""A free TCP port for a server a test starts, that nothing else on the machine will take."""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAYS_WORKER_PORTS_END = 19999  # Ray's workers bind 10002-19999 by default


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port from ``bind(0)`` is free only
    until the child binds it, seconds later, and any other ``bind(0)`` (Ray's daemons, Gloo,
    chromedriver, another test worker) may be handed it meanwhile; the kernel never hands
    out a port below ``ip_local_port_range``, so only another pick here could collide."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    pick = random.SystemRandom()
    for _ in range(1000):
        port = pick.randrange(RAYS_WORKER_PORTS_END + 1, max(RAYS_WORKER_PORTS_END + 2, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range is all taken: the kernel's pick, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
