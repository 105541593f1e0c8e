"""What the edge measures, and GET /metrics.

Each HTTP request gets an Exchange (set by MetricsMiddleware in a context
variable); a client interceptor on the router channel fills in what the router
said in its trailers: how long the request waited on providers, and the model it
was counted under. The gateway's overhead is the rest of the edge's time.

/metrics is unauthenticated, like /healthz: Envoy (or whatever fronts the edge)
must not route it from the public listener; Prometheus scrapes the pods directly.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from services.common.metrics import LATENCY_BUCKETS, MODEL_KEY, UPSTREAM_FIRST_MS_KEY, UPSTREAM_MS_KEY, LabelCache

# The route label of a path no route matched: raw paths would make the label set unbounded.
OTHER_ROUTE = "other"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

REQUESTS = Counter(
    "interlock_http_requests_total",
    "HTTP requests answered by the edge; route is the route template.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "interlock_http_request_seconds",
    "Time from a request's arrival to its last response byte.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
TTFT_SECONDS = Histogram(
    "interlock_http_ttft_seconds",
    "Streams: time from a request's arrival to its first body chunk.",
    ["route", "model"],
    buckets=TTFT_BUCKETS,
)
OVERHEAD_SECONDS = Histogram(
    "interlock_gateway_overhead_seconds",
    "Edge time not spent waiting on a provider (as the router reported it), for requests that reached the router.",
    ["route"],
    buckets=OVERHEAD_BUCKETS,
)
BY_MODEL = Counter(
    "interlock_http_responses_by_model_total",
    "HTTP responses of requests the router counted under a catalog model.",
    ["route", "model", "status"],
)
ADMISSIONS = Counter(
    "interlock_edge_admissions_total",
    "Rate-limit decisions at the edge: path lease (admitted from this process's quota leases, no call) "
    "or check (one Check call to ratelimit), outcome admitted, refused or unavailable.",
    ["path", "outcome"],
)
# Bound once: they are counted on every request.
ADMITTED_FROM_LEASE = ADMISSIONS.labels("lease", "admitted")
ADMITTED_BY_CHECK = ADMISSIONS.labels("check", "admitted")
REFUSED_BY_CHECK = ADMISSIONS.labels("check", "refused")
CHECK_UNAVAILABLE = ADMISSIONS.labels("check", "unavailable")
_requests = LabelCache(REQUESTS)
_request_seconds = LabelCache(REQUEST_SECONDS)
_ttft_seconds = LabelCache(TTFT_SECONDS)
_overhead_seconds = LabelCache(OVERHEAD_SECONDS)
_by_model = LabelCache(BY_MODEL)


@dataclass
class Exchange:
    """What one HTTP request's metrics need beyond the ASGI messages."""

    # The catalog model the router counted the request under; empty until it says.
    model: str = ""
    # Seconds the router reported waiting on providers; None: the router was not reached.
    upstream_seconds: float | None = None
    # Streams: seconds the router waited on providers until its first message (its initial metadata).
    upstream_first_seconds: float | None = None

    def overhead_ms(self, elapsed: float) -> bytes | None:
        """The X-Interlock-Overhead-Ms value when the response starts after `elapsed` seconds:
        the edge's time minus the providers' so far; None when the router was not reached."""
        upstream = self.upstream_seconds if self.upstream_seconds is not None else self.upstream_first_seconds
        if upstream is None:
            return None
        return b"%.3f" % (max(elapsed - upstream, 0.0) * 1000)

    def heard_first(self, metadata: Any) -> None:
        """Take what a router stream's initial metadata says."""
        for key, value in metadata or ():
            if key == UPSTREAM_FIRST_MS_KEY:
                with contextlib.suppress(TypeError, ValueError):
                    self.upstream_first_seconds = float(value) / 1000

    def heard(self, trailers: Any) -> None:
        """Take what the router's trailing metadata says."""
        for key, value in trailers or ():
            if key == UPSTREAM_MS_KEY:
                with contextlib.suppress(TypeError, ValueError):
                    self.upstream_seconds = (self.upstream_seconds or 0.0) + float(value) / 1000
            elif key == MODEL_KEY and isinstance(value, str):
                self.model = value


# Set per request by the middleware. Tasks started within the request (a streaming
# body, the gRPC interceptor's) copy the context, so they reach the same Exchange.
_current: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("interlock_exchange", default=None)


@contextlib.contextmanager
def exchange() -> Iterator[Exchange]:
    """A fresh Exchange, current for the duration of the block."""
    made = Exchange()
    token = _current.set(made)
    try:
        yield made
    finally:
        _current.reset(token)


def route_of(scope: Scope) -> str:
    """The matched route's template (such as /v1/models/{model_id:path}), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else OTHER_ROUTE


def observe(  # noqa: PLR0917 - called from one place, which names what it passes
    route: str, method: str, status: int, seconds: float, ttft: float | None, seen: Exchange
) -> None:
    """Count one finished HTTP request."""
    status_label = str(status)
    _requests(route, method, status_label).inc()
    _request_seconds(route).observe(seconds)
    if seen.model:
        _by_model(route, seen.model, status_label).inc()
        if ttft is not None:
            _ttft_seconds(route, seen.model).observe(ttft)
    if seen.upstream_seconds is not None:
        _overhead_seconds(route).observe(max(seconds - seen.upstream_seconds, 0.0))


def _request_model(request: Any) -> str:
    """The model a router request names (the stream RPCs wrap the request)."""
    inner = getattr(request, "request", request)
    return str(getattr(inner, "model", ""))


async def _observed(call: grpc.aio.UnaryStreamCall[Any, Any], request: Any, seen: Exchange) -> AsyncIterator[Any]:
    """call's messages, reading its trailers when it ends."""
    first = True
    try:
        async for message in call:
            if first:
                first = False
                # The router accepted the model, so it is a catalog id; the trailers, if the
                # stream runs to its end, name the model the router counted instead.
                seen.model = seen.model or _request_model(request)
                # Arrived with (before) the first message, so this does not wait.
                seen.heard_first(await call.initial_metadata())
            yield message
    except grpc.aio.AioRpcError as exc:
        seen.heard(exc.trailing_metadata())
        raise
    seen.heard(await call.trailing_metadata())


class UnaryObserver(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Reads a unary router call's trailers into the current request's Exchange."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], grpc.aio.UnaryUnaryCall[Any, Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        # The stubs say continuation returns the call; at run time it returns an awaitable of it.
        call: grpc.aio.UnaryUnaryCall[Any, Any] = await cast(Any, continuation(client_call_details, request))
        seen = _current.get()
        if seen is None:
            return call
        # The caller awaits the same call after this and gets its answer or its error.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        seen.heard(await call.trailing_metadata())
        return call


class StreamObserver(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Reads a streaming router call's trailers into the current request's Exchange."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], grpc.aio.UnaryStreamCall[Any, Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> AsyncIterable[Any] | grpc.aio.UnaryStreamCall[Any, Any]:
        call: grpc.aio.UnaryStreamCall[Any, Any] = await cast(Any, continuation(client_call_details, request))
        seen = _current.get()
        if seen is None:
            return call
        return _observed(call, request, seen)


def router_interceptors() -> list[Any]:
    """The interceptors of the router channel: one object per kind, since a channel files
    each interceptor under the first kind it is (Any: the stubs leave them untyped)."""
    return [UnaryObserver(), StreamObserver()]


async def metrics_endpoint(request: Request) -> Response:
    """The default registry in the Prometheus text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_PLAIN_0_0_4)
