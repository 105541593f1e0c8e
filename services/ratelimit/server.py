"""Composition root of the ratelimit service."""

from __future__ import annotations

from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from services.common.channels import open_channel
from services.common.clock import Clock, SystemClock
from services.common.grpc_server import GrpcService, Registration, create_server
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.backends.redis import RedisBackend
from services.ratelimit.envoy import EnvoyRateLimitServicer
from services.ratelimit.ledger import LedgerFloors
from services.ratelimit.limiter import Limiter
from services.ratelimit.policy import Floors
from services.ratelimit.quotas import Backend
from services.ratelimit.servicer import RateLimitServicer
from services.ratelimit.settings import RateLimitSettings

# How long a starting replica waits for the usage ledger before serving without it.
LEDGER_WAIT_SECONDS = 10.0
SERVICE_NAME = ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
ENVOY_SERVICE_NAME = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name


def build_backend(settings: RateLimitSettings) -> Backend:
    if not settings.redis_url:
        return MemoryBackend()
    return RedisBackend.from_url(
        settings.redis_url,
        settings.redis_prefix,
        cluster=settings.redis_cluster,
        timeout_seconds=settings.redis_timeout_seconds,
    )


async def build_server(settings: RateLimitSettings, clock: Clock | None = None) -> GrpcService:
    clock = clock or SystemClock()
    backend = build_backend(settings)
    limiter = Limiter(backend, clock, fail_open=settings.fail_open, hold_seconds=settings.hold_seconds)
    floors = Floors()
    servicer = RateLimitServicer(limiter, settings.rules, floors, clock, lease_ms=settings.lease_ms)
    envoy = EnvoyRateLimitServicer(limiter, settings.rules)
    service = create_server(
        settings.listen,
        [
            Registration(ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server, servicer, SERVICE_NAME),
            Registration(rls_pb2_grpc.add_RateLimitServiceServicer_to_server, envoy, ENVOY_SERVICE_NAME),
        ],
    )
    if settings.usage_addr:
        channel = open_channel(settings.usage_addr)
        ledger = LedgerFloors(channel, floors, clock, settings.ledger_refresh_seconds)
        await ledger.start(LEDGER_WAIT_SECONDS)

        async def close_ledger() -> None:
            await ledger.close()
            await channel.close(grace=None)

        service.cleanups.append(close_ledger)
    service.cleanups.append(backend.close)
    return service
