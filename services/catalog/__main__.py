"""python -m services.catalog: run the catalog service."""

from __future__ import annotations

from services.catalog.server import build_server
from services.catalog.settings import CatalogSettings
from services.common.runner import run_service


def main() -> None:
    run_service("catalog", CatalogSettings.from_env, build_server)


if __name__ == "__main__":
    main()
