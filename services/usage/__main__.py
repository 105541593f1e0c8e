"""python -m services.usage: run the usage service."""

from __future__ import annotations

from services.common.runner import run_service
from services.usage.server import build_server
from services.usage.settings import UsageSettings


def main() -> None:
    run_service("usage", UsageSettings.from_env, build_server)


if __name__ == "__main__":
    main()
