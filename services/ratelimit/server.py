"""Composition root of the ratelimit service."""

from __future__ import annotations

from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from services.common.clock import Clock, SystemClock
from services.common.grpc_server import GrpcService, Registration, create_server
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.servicer import RateLimitServicer
from services.ratelimit.settings import RateLimitSettings

SERVICE_NAME = ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name


def build_server(settings: RateLimitSettings, clock: Clock | None = None) -> GrpcService:
    clock = clock or SystemClock()
    servicer = RateLimitServicer(MemoryBackend(clock), clock, settings.default_requests_per_minute)
    return create_server(
        settings.listen,
        [Registration(ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server, servicer, SERVICE_NAME)],
    )
