"""The edge's listening sockets, bound here rather than by uvicorn so that several
edge workers can share one port (SO_REUSEPORT) and each can have a private one."""

from __future__ import annotations

import socket

from services.common.errors import ConfigError


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket (asyncio listens on it when the server starts). A taken port
    is a configuration error, as for every other listener."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restarted worker rebinds at once over connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # The kernel spreads new connections over every worker bound with it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def parse_address(name: str, address: str) -> tuple[str, int]:
    """host:port (an IPv6 host in brackets) as the pair to bind; name is the setting's."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}={address!r} is not host:port")
    return host, int(port)
