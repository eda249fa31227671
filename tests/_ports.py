"""Free TCP ports on 127.0.0.1 for the servers tests start.

Ports come from below Linux's default ephemeral range (32768-60999): a port the kernel
hands out for port 0 may be taken by an outgoing connection before the server binds it,
and a cluster's members name each other's ports (and etcd's) before they start.
"""

from __future__ import annotations

import random
import socket

PORT_RANGE = (20000, 32767)
PORT_TRIES_MAX = 200
_rng = random.Random()


def free_port() -> int:
    for _ in range(PORT_TRIES_MAX):  # bounded
        port = _rng.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} after {PORT_TRIES_MAX} tries")
