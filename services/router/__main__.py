"""python -m services.router: run the router service."""

from __future__ import annotations

from services.common.runner import run_service
from services.router.server import build_server
from services.router.settings import RouterSettings


def main() -> None:
    run_service("router", RouterSettings.from_env, build_server)


if __name__ == "__main__":
    main()
