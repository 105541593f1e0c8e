"""python -m services.catalog: run the catalog service."""

from __future__ import annotations

import asyncio
import os

from services.catalog.server import build_server
from services.catalog.settings import CatalogSettings
from services.common.grpc_server import configure_logging, serve_until_signalled


def main() -> None:
    settings = CatalogSettings.from_env(os.environ)
    configure_logging(settings.log_level)

    async def run() -> None:
        await serve_until_signalled(build_server(settings), settings.grace_seconds, "catalog")

    asyncio.run(run())


if __name__ == "__main__":
    main()
