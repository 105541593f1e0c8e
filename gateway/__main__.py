"""python -m gateway: run the edge translator."""

from __future__ import annotations

import logging
import os
import socket
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import EdgeSettings
from gateway.sockets import bind_tcp, parse_address
from services.common.errors import ConfigError
from services.common.grpc_server import configure_logging
from services.common.parent import die_with_parent
from services.common.runner import tune_gc


def _refuse(exc: ConfigError) -> None:
    print(f"edge: invalid settings: {exc}", file=sys.stderr)
    sys.exit(2)


def _sockets(settings: EdgeSettings) -> list[socket.socket]:
    """The shared public socket, and this worker's private one when it has one."""
    sockets = [bind_tcp(settings.host, settings.port, reuse_port=settings.reuse_port)]
    if settings.worker_listen:
        host, port = parse_address("INTERLOCK_EDGE_WORKER_LISTEN", settings.worker_listen)
        sockets.append(bind_tcp(host, port))
    return sockets


def main() -> None:
    die_with_parent(os.environ)
    try:
        settings = EdgeSettings.from_env(os.environ)
        # Before the app starts: a taken port fails the start with the settings errors.
        sockets = _sockets(settings)
    except ConfigError as exc:
        _refuse(exc)
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info(
        "edge (%s) listening on http://%s:%d%s",
        settings.mode,
        settings.host,
        settings.port,
        f" and http://{settings.worker_listen}" if settings.worker_listen else "",
    )
    app = create_app(settings)
    tune_gc()  # after the imports, which are most of what stays alive
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, round(settings.grace_seconds)),
        timeout_keep_alive=settings.keep_alive_seconds,
        # Uvicorn believes X-Forwarded-For only from these peers (the proxy in front).
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    # The lifespan failing (the co-located router could not start, say) ends serve() early.
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()
