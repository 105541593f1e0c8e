"""What every public route needs: the gRPC stubs, the caches, and admit(),
which authenticates and rate-limits a request before any work is done."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from starlette.requests import Request

from gateway.auth import Authenticator
from gateway.estimate import Estimate, Estimator
from gateway.quota import QuotaClient, Reservation
from gateway.settings import EdgeSettings
from gateway.sse import open_stream
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.jobs.v1 import jobs_pb2_grpc
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.catalog_cache import CatalogCache
from services.common.errors import PermissionDeniedError

M = TypeVar("M")


@dataclass
class Admitted:
    key: cpb.ApiKey
    caller: pb.CallerContext
    # Tokens and spend reserved for this request, settled when it ends.
    reservation: Reservation | None = None


@dataclass
class Used:
    """Filled in by a route with the usage it saw; settled when the request ends."""

    usage: pb.Usage | None = None


class EdgeContext:
    def __init__(
        self,
        *,
        settings: EdgeSettings,
        cache: CatalogCache,
        auth: Authenticator,
        router: router_pb2_grpc.RouterServiceAsyncStub,
        quotas: QuotaClient,
        estimator: Estimator,
        jobs: jobs_pb2_grpc.JobServiceAsyncStub | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.auth = auth
        self.router = router
        self.quotas = quotas
        self.estimator = estimator
        self._jobs = jobs

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceAsyncStub:
        assert self._jobs is not None, "the edge was built without the job service"
        return self._jobs

    def authenticate(self, request: Request) -> cpb.ApiKey:
        return self.auth.authenticate(request.headers)

    async def admit(
        self,
        request: Request,
        endpoint: str,
        key: cpb.ApiKey | None = None,
        estimate: Callable[[], Estimate] | None = None,
    ) -> Admitted:
        """Authenticate (unless the route already did) and check every quota in one
        call, reserving the estimate's tokens and spend; raises the 401, 429 or 503."""
        key = key or self.authenticate(request)
        caller = pb.CallerContext(
            request_id=request.scope["state"]["request_id"],
            key_id=key.id,
            project=key.project,
            client_ip=request.client.host if request.client else "",
            endpoint=endpoint,
        )
        counted = None
        if estimate is not None:
            measure = estimate

            def counted() -> Estimate:
                # Keep the prompt count for the router, which would otherwise count again.
                made = measure()
                caller.prompt_tokens = made.prompt_tokens
                return made

        admission = await self.quotas.check(caller, key, counted)
        request.scope["state"]["ratelimit_headers"] = admission.headers
        if admission.refusal is not None:
            raise admission.refusal
        return Admitted(key=key, caller=caller, reservation=admission.reservation)

    async def open_settled_stream(
        self, admitted: Admitted, call: grpc.aio.UnaryStreamCall[Any, M]
    ) -> tuple[M, AsyncIterator[M], Used, Callable[[], None]]:
        """Open a router stream; the route records usage in the Used it gets back,
        and the callback (for relay's on_close) settles with it when the stream ends.
        A stream that fails before its first message is settled at once."""
        used = Used()
        try:
            first, rest = await open_stream(call)
        except BaseException:
            self.quotas.settle(admitted.reservation, None)
            raise
        return first, rest, used, lambda: self.quotas.settle(admitted.reservation, used.usage)

    @contextlib.contextmanager
    def settling(self, admitted: Admitted) -> Iterator[Used]:
        """Settle the reservation however the block ends: with the usage the route
        recorded, or none (a release) when it failed before any."""
        used = Used()
        try:
            yield used
        finally:
            self.quotas.settle(admitted.reservation, used.usage)

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
