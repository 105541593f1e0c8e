"""python -m services.ratelimit: run the ratelimit service."""

from __future__ import annotations

from services.common.runner import run_service
from services.ratelimit.server import build_server
from services.ratelimit.settings import RateLimitSettings


def main() -> None:
    run_service("ratelimit", RateLimitSettings.from_env, build_server)


if __name__ == "__main__":
    main()
