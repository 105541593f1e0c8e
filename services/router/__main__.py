"""python -m services.router: run the router service."""

from __future__ import annotations

import asyncio
import os

from services.common.grpc_server import configure_logging, serve_until_signalled
from services.router.server import build_server
from services.router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings.from_env(os.environ)
    configure_logging(settings.log_level)

    async def run() -> None:
        await serve_until_signalled(await build_server(settings), settings.grace_seconds, "router")

    asyncio.run(run())


if __name__ == "__main__":
    main()
