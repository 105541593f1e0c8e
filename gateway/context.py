"""What every public route needs: the gRPC stubs, the caches, and admit(),
which authenticates and rate-limits a request before any work is done."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import grpc
from starlette.requests import Request

from gateway.auth import Authenticator
from gateway.settings import EdgeSettings
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.catalog_cache import CatalogCache
from services.common.errors import PermissionDeniedError, RateLimitError, UpstreamError

log = logging.getLogger(__name__)
RATELIMIT_TIMEOUT_SECONDS = 2.0


@dataclass
class Admitted:
    key: cpb.ApiKey
    caller: pb.CallerContext


class EdgeContext:
    def __init__(
        self,
        settings: EdgeSettings,
        cache: CatalogCache,
        auth: Authenticator,
        router: router_pb2_grpc.RouterServiceAsyncStub,
        ratelimit: ratelimit_pb2_grpc.RateLimitServiceAsyncStub,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.auth = auth
        self.router = router
        self.ratelimit = ratelimit

    async def admit(self, request: Request, endpoint: str) -> Admitted:
        key = self.auth.authenticate(request.headers)
        client_ip = request.client.host if request.client else ""
        await self._rate_limit(request, key, client_ip, endpoint)
        caller = pb.CallerContext(
            request_id=request.scope["state"]["request_id"],
            key_id=key.id,
            project=key.project,
            client_ip=client_ip,
            endpoint=endpoint,
        )
        return Admitted(key=key, caller=caller)

    async def _rate_limit(self, request: Request, key: cpb.ApiKey, client_ip: str, endpoint: str) -> None:
        check = rpb.CheckRequest(
            key_id=key.id,
            project=key.project,
            client_ip=client_ip,
            endpoint=endpoint,
            requests_per_minute=self.requests_per_minute(key),
        )
        try:
            decision = await self.ratelimit.Check(check, timeout=RATELIMIT_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if self.settings.ratelimit_fail_open:
                log.warning("ratelimit unavailable (%s); admitting (fail open)", exc.code().name)
                return
            raise UpstreamError(
                "Rate limiting is unavailable; try again shortly.", code="ratelimit_unavailable", http_status=503
            ) from exc
        request.scope["state"]["ratelimit_headers"] = [
            (b"x-ratelimit-limit", str(decision.limit).encode()),
            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
            (b"x-ratelimit-reset", str(decision.reset_at).encode()),
        ]
        if not decision.allowed:
            raise RateLimitError(
                f"Rate limit reached for requests ({decision.quota}): {decision.limit} per minute.",
                retry_after=float(decision.retry_after_seconds),
            )

    def requests_per_minute(self, key: cpb.ApiKey) -> int:
        """The key's own limit, else its plan's; 0 leaves the ratelimit service's default."""
        if key.requests_per_minute:
            return key.requests_per_minute
        plan = self.cache.plans.get(key.plan)
        return plan.requests_per_minute if plan is not None else 0

    def may_use(self, key: cpb.ApiKey, model_id: str) -> bool:
        """A key with no model list may use everything; otherwise ids, globs or profiles."""
        return not key.models or any(fnmatch.fnmatchcase(model_id, pattern) for pattern in key.models)

    def check_model_access(self, key: cpb.ApiKey, model_id: str, route: pb.RouteHints | None = None) -> None:
        """The model and every fallback model must be in the key's scope."""
        if not self.may_use(key, model_id):
            raise PermissionDeniedError(
                f"This API key may not use the model '{model_id}'.", code="model_not_allowed", param="model"
            )
        for fallback in route.fallbacks if route is not None else ():
            if not self.may_use(key, fallback):
                raise PermissionDeniedError(
                    f"This API key may not use the fallback model '{fallback}'.",
                    code="model_not_allowed",
                    param="route.fallback",
                )
