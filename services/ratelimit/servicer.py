"""RateLimitService: per-key requests-per-minute decisions."""

from __future__ import annotations

from typing import Any

import grpc

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.common.clock import Clock
from services.ratelimit.backends import Backend

WINDOW_SECONDS = 60


class RateLimitServicer(ratelimit_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, backend: Backend, clock: Clock, default_rpm: int) -> None:
        self._backend = backend
        self._clock = clock
        self._default_rpm = default_rpm

    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.CheckResponse:
        limit = request.requests_per_minute or self._default_rpm
        result = await self._backend.hit(f"key:{request.key_id}:requests", limit, WINDOW_SECONDS, request.cost or 1)
        retry_after = 0 if result.allowed else max(1, result.reset_at - int(self._clock.now()))
        return pb.CheckResponse(
            allowed=result.allowed,
            limit=result.limit,
            remaining=result.remaining,
            reset_at=result.reset_at,
            retry_after_seconds=retry_after,
            quota="key:requests",
        )
