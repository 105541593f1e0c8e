"""Prometheus metrics every process shares: the /metrics listener of a service,
the gRPC server metrics (counted by an interceptor), and the trailers by which
the router tells the edge how long a request waited on providers.

Everything lives in prometheus_client's default registry (which also carries
the process and GC collectors), so a module anywhere in the process can define
metrics of its own and they are served on the same page without wiring.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from services.common.errors import ConfigError
from services.common.rpc import rewrap

# Seconds. Spans a cache hit in the catalog (well under a millisecond) to a long
# completion relayed by the router (minutes).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Trailing metadata of the router's answers: how long the request waited on providers
# (milliseconds, fractional), and the catalog model it was counted under.
UPSTREAM_MS_KEY = "interlock-upstream-ms"
MODEL_KEY = "interlock-model"
# Initial metadata of the router's streams, sent with the first message: how long the
# request waited on providers until then (milliseconds), for the edge's overhead header.
UPSTREAM_FIRST_MS_KEY = "interlock-upstream-ms-first"

M = TypeVar("M", bound=MetricWrapperBase)


class LabelCache(Generic[M]):
    """A metric's children by label values, looked up without the library's lock.
    Only for label sets known to be bounded."""

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


@functools.cache
def _grpc_metrics() -> tuple[Counter, Histogram]:
    """Created on first use, so a process serving no gRPC (the edge) does not list them."""
    handled = Counter(
        "interlock_grpc_server_handled_total",
        "RPCs completed by this server, by final status code (streams count when they end).",
        ["service", "method", "code"],
    )
    seconds = Histogram(
        "interlock_grpc_server_handling_seconds",
        "Time from an RPC's arrival to its final status (streams: to their end).",
        ["service", "method"],
        buckets=LATENCY_BUCKETS,
    )
    return handled, seconds


@dataclass
class MetricsServer:
    """The HTTP listener serving the registry, on a daemon thread of its own."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def parse_listen(address: str) -> tuple[str, int]:
    """host:port (an IPv6 host in brackets) as the pair the listener binds."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics listen address {address!r} is not host:port")
    return host, int(port)


def start_metrics_server(address: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer | None:
    """Serve the registry over HTTP at address (port 0 picks a free one); None when
    address is empty (metrics disabled). A port in use is a configuration error."""
    if not address:
        return None
    host, port = parse_listen(address)
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    return MetricsServer(server, thread)


class _Method:
    """One RPC method's metric children, looked up once rather than per call."""

    def __init__(self, full_method: str) -> None:
        handled, seconds = _grpc_metrics()
        service, _, method = full_method.lstrip("/").rpartition("/")
        self._labels = (service or "unknown", method)
        self._seconds = seconds.labels(*self._labels)
        self._handled: dict[str, Counter] = {}
        self._handled_metric = handled

    def done(self, code: str, seconds: float) -> None:
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._handled_metric.labels(*self._labels, code)
        handled.inc()
        self._seconds.observe(seconds)


def _code(context: grpc.aio.ServicerContext[Any, Any], failure: BaseException | None) -> str:
    """The status an RPC ended with. An abort records its code on the context;
    a handler that returned normally has none set unless it chose one."""
    if isinstance(failure, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code: object = context.code()  # None until set, whatever the stubs say
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failure is not None and not isinstance(failure, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


def _timed_unary(behavior: Callable[..., Awaitable[Any]], method: _Method) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            method.done(_code(context, failure), time.perf_counter() - started)

    return handler


def _timed_stream(behavior: Callable[..., AsyncIterator[Any]], method: _Method) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            method.done(_code(context, failure), time.perf_counter() - started)

    return handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every unary and server-streaming RPC. Registered first, so
    it sees the status the error-mapping interceptor settled on."""

    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # unknown method: not counted, so labels stay bounded
        name = handler_call_details.method
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _Method(name)
        return rewrap(
            handler,
            functools.partial(_timed_unary, method=method),
            functools.partial(_timed_stream, method=method),
        )
