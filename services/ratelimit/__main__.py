"""python -m services.ratelimit: run the ratelimit service."""

from __future__ import annotations

import asyncio
import os

from services.common.grpc_server import configure_logging, serve_until_signalled
from services.ratelimit.server import build_server
from services.ratelimit.settings import RateLimitSettings


def main() -> None:
    settings = RateLimitSettings.from_env(os.environ)
    configure_logging(settings.log_level)

    async def run() -> None:
        await serve_until_signalled(build_server(settings), settings.grace_seconds, "ratelimit")

    asyncio.run(run())


if __name__ == "__main__":
    main()
