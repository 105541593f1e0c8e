"""python -m gateway: run the edge translator."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import EdgeSettings
from services.common.errors import ConfigError
from services.common.grpc_server import configure_logging
from services.common.parent import die_with_parent
from services.common.runner import tune_gc


def main() -> None:
    die_with_parent(os.environ)
    try:
        settings = EdgeSettings.from_env(os.environ)
    except ConfigError as exc:
        print(f"edge: invalid settings: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info("edge listening on http://%s:%d", settings.host, settings.port)
    app = create_app(settings)
    tune_gc()  # after the imports, which are most of what stays alive
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, round(settings.grace_seconds)),
        timeout_keep_alive=settings.keep_alive_seconds,
        # Uvicorn believes X-Forwarded-For only from these peers (the proxy in front).
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


if __name__ == "__main__":
    main()
