"""The body of every service's __main__: settings once, logging, serve,
and a clear one-line message (exit code 2) for bad configuration."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from services.common.errors import ConfigError
from services.common.grpc_server import GrpcService, configure_logging, serve_until_signalled


class ServiceSettings(Protocol):
    @property
    def grace_seconds(self) -> float: ...

    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=ServiceSettings)


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def run_service(
    label: str,
    load: Callable[[Mapping[str, str]], S],
    build: Callable[[S], GrpcService | Awaitable[GrpcService]],
) -> None:
    try:
        settings = load(os.environ)
    except ConfigError as exc:
        _refuse(f"{label}: invalid settings: {exc}")

    async def serve() -> None:
        built = build(settings)
        service = await built if inspect.isawaitable(built) else built
        await serve_until_signalled(service, settings.grace_seconds, label)

    configure_logging(settings.log_level)
    try:
        asyncio.run(serve())
    except ConfigError as exc:
        _refuse(f"{label}: invalid configuration: {exc}")
