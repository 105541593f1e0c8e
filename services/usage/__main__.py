"""python -m services.usage: run the usage service."""

from __future__ import annotations

import asyncio
import os

from services.common.grpc_server import configure_logging, serve_until_signalled
from services.usage.server import build_server
from services.usage.settings import UsageSettings


def main() -> None:
    settings = UsageSettings.from_env(os.environ)
    configure_logging(settings.log_level)

    async def run() -> None:
        await serve_until_signalled(build_server(settings), settings.grace_seconds, "usage")

    asyncio.run(run())


if __name__ == "__main__":
    main()
