"""Co-located mode: the router inside the edge process.

The edge calls it through an in-process channel (no serialization, no socket), and
the same router also serves its gRPC API on its own listener, on the edge's event
loop, because internal gRPC clients and the usage process's jobs and agents call the
router over gRPC. With several edge workers that listener is shared (SO_REUSEPORT).
The router's metrics are in this process's registry, so on the edge's own /metrics
(INTERLOCK_ROUTER_METRICS_LISTEN is not used here: workers would share one port)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.metrics import router_interceptors
from interlock.router.v1 import router_pb2_grpc
from services.common.clock import Clock
from services.common.grpc_server import ErrorMappingInterceptor, GrpcService, create_server
from services.common.inprocess import InProcessChannel
from services.router.server import Router, build_router
from services.router.settings import RouterSettings


@dataclass
class ColocatedRouter:
    router: Router
    service: GrpcService
    channel: InProcessChannel

    def stub(self) -> router_pb2_grpc.RouterServiceAsyncStub:
        return router_pb2_grpc.RouterServiceStub(self.channel)

    async def close(self, grace: float) -> None:
        # The gRPC listener drains first; the router itself (spools, emitters) closes last.
        try:
            await self.service.stop(grace)
            await self.channel.close()
        finally:
            await self.router.close()


async def start_colocated_router(settings: RouterSettings, *, clock: Clock, reuse_port: bool) -> ColocatedRouter:
    router = await build_router(settings, clock=clock)
    try:
        service = create_server(settings.listen, router.registrations, reuse_port=reuse_port)
        await service.start()
    except BaseException:
        await router.close()
        raise
    channel = InProcessChannel(
        router.registrations,
        # Errors leave the servicer exactly as over gRPC (statuses with ErrorInfo, REST trailers).
        # Not the gRPC server metrics: these calls are not gRPC calls (the router's own metrics
        # count them), and the hot path is spared their cost.
        server_interceptors=[ErrorMappingInterceptor()],
        # The router's trailers say how long a request waited on providers (for the overhead metric).
        interceptors=router_interceptors(),
    )
    return ColocatedRouter(router, service, channel)
