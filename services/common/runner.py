"""The body of every service's __main__: settings once, logging, the metrics
listener, serve, and a clear one-line message (exit code 2) for bad configuration."""

from __future__ import annotations

import gc
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, Protocol, TypeVar

import uvloop  # uvicorn[standard] brings it; grpc.aio runs on it

from services.common.errors import ConfigError
from services.common.grpc_server import GrpcService, configure_logging, serve_until_signalled
from services.common.metrics import start_metrics_server
from services.common.parent import die_with_parent


class ServiceSettings(Protocol):
    @property
    def grace_seconds(self) -> float: ...

    @property
    def log_level(self) -> str: ...

    @property
    def metrics_listen(self) -> str: ...


S = TypeVar("S", bound=ServiceSettings)
# Young-generation collections every 700 allocations cost a hot path of short-lived protos
# and dicts a few percent; a larger first threshold keeps the cycle collector out of the way.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Once started: move everything alive (modules, caches, the catalog) out of the
    collector's sight, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _refuse(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(2)


def run_service(
    label: str,
    load: Callable[[Mapping[str, str]], S],
    build: Callable[[S], GrpcService | Awaitable[GrpcService]],
) -> None:
    die_with_parent(os.environ)
    try:
        settings = load(os.environ)
    except ConfigError as exc:
        _refuse(f"{label}: invalid settings: {exc}")

    async def serve() -> None:
        built = build(settings)
        service = await built if inspect.isawaitable(built) else built
        tune_gc()
        await serve_until_signalled(service, settings.grace_seconds, label)

    configure_logging(settings.log_level)
    try:
        # Before the service is built: a taken port fails the start, not a scrape later.
        metrics = start_metrics_server(settings.metrics_listen)
    except ConfigError as exc:
        _refuse(f"{label}: invalid settings: {exc}")
    try:
        uvloop.run(serve())
    except ConfigError as exc:
        _refuse(f"{label}: invalid configuration: {exc}")
    finally:
        if metrics is not None:
            metrics.close()
