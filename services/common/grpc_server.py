"""The gRPC server scaffold every service uses: health, reflection, error
mapping and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the async servicer health.aio re-exports
from grpc_reflection.v1alpha import reflection

from services.common.errors import InterlockError, ServerError, rest_trailers, to_status
from services.common.metrics import MetricsInterceptor
from services.common.rpc import REQUEST_ID_KEY, rewrap

log = logging.getLogger(__name__)

# Generous enough for chat payloads with images; the edge enforces the public limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Registration:
    """One servicer to serve: the generated add_*_to_server function and its full name."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: object
    name: str


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if not isinstance(exc, InterlockError):
        log.exception("unhandled error", exc_info=exc)
        exc = ServerError("internal error")
    status = to_status(exc)
    request_id = next((str(v) for k, v in context.invocation_metadata() or () if k == REQUEST_ID_KEY), "")
    # abort() replaces the trailing metadata a servicer set (such as the router's
    # interlock-upstream-ms): send both.
    trailing = (
        *(context.trailing_metadata() or ()),
        *status.trailing_metadata,
        *rest_trailers(exc, request_id),
    )
    await context.abort(status.code, status.details, trailing_metadata=trailing)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves through _abort
            await _abort(context, exc)

    return handler


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)

    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns domain errors raised by servicers into statuses with ErrorInfo."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return rewrap(await continuation(handler_call_details), _wrap_unary, _wrap_stream)


@dataclass
class GrpcService:
    """A started-or-ready gRPC server with its health state and cleanup hooks."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    names: Sequence[str]
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        for name in (*self.names, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for cleanup in reversed(self.cleanups):
            await cleanup()


def create_server(address: str, registrations: Sequence[Registration], *, reuse_port: bool = False) -> GrpcService:
    """Create a server bound to address (port 0 picks a free one), not yet started.
    reuse_port: several processes share the address (co-located edge workers serving
    the router); otherwise a taken port fails the bind, as it should for one service."""
    server = grpc.aio.server(
        # Metrics first: it sees the status the error mapping settles on.
        interceptors=[MetricsInterceptor(), ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Clients ping every 30 s to keep idle watch streams alive (gateway.app CHANNEL_OPTIONS);
            # gRPC's default (5 min) counts those pings as abuse and sends GOAWAY, failing calls.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            # Clients reconnect (and re-resolve the service's pods) every few minutes; calls and
            # watch streams open on the old connection finish there (the grace is unbounded).
            ("grpc.max_connection_age_ms", 300_000),
        ],
    )
    for registration in registrations:
        registration.add(registration.servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.name for r in registrations]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return GrpcService(server=server, port=port, health=health_servicer, names=names)


async def serve_until_signalled(service: GrpcService, grace: float, label: str) -> None:
    """Start, announce readiness, and drain gracefully on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    log.info("%s serving on port %d", label, service.port)
    await stop.wait()
    log.info("%s draining (grace %.1fs)", label, grace)
    await service.stop(grace)
    log.info("%s stopped", label)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs full URLs at INFO; keep them out of the service logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
