"""Pick a loopback port for a process that will bind it later.

Binding port 0 and closing the socket hands back a port from the kernel's
ephemeral range, and that range is exactly what every outgoing connection
and every other bind(0) draws from: in the seconds before the child binds
it, someone else can take it ("Address already in use"). Ports below the
ephemeral range are never handed out implicitly, so only another explicit
picker can collide; a random pick that is checked by binding makes that
unlikely, and ports already given out by this process are never repeated.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the registered services people commonly run locally, above the well-known ports.
_LOWEST = 10_000
_FALLBACK_EPHEMERAL_LOW = 32_768
_ATTEMPTS = 200

_given: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_low(range_file: Path = _RANGE_FILE) -> int:
    """The first port the kernel may hand out implicitly."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing holds now and the kernel will not give away."""
    high = ephemeral_low()
    with _lock:
        if high - _LOWEST > 1_000:
            for _ in range(_ATTEMPTS):
                port = _random.randrange(_LOWEST, high)
                if port not in _given and _bindable(host, port):
                    _given.add(port)
                    return port
        # An unusual ephemeral range leaves no room below it: fall back to the kernel's pick.
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        _given.add(port)
        return port
