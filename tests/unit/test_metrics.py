"""The metrics pieces one at a time: the listener, the gRPC server interceptor,
the router's timer, labels and breaker gauge, ratelimit decisions, and the
edge's middleware and router-call observers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway import metrics as edge_metrics
from gateway.middleware import MetricsMiddleware
from interlock.usage.v1 import usage_pb2 as upb
from services.common.clock import ManualClock
from services.common.errors import ConfigError, InvalidRequestError, NotFoundError, UpstreamError
from services.common.grpc_server import GrpcService, Registration, create_server
from services.common.metrics import MODEL_KEY, UPSTREAM_MS_KEY, parse_listen, start_metrics_server
from services.ratelimit import metrics as rl_metrics
from services.ratelimit.quotas import Kind, Quota, QuotaOutcome
from services.router import metrics as router_metrics
from services.router.breaker import CircuitBreakers


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the listener ---------------------------------------------------------------------------


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:9101") == ("::1", 9101)
    for bad in ("9101", "host:", ":9101", "host:port", "host:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert start_metrics_server("") is None  # empty: no listener


def test_listener_serves_the_registry_and_closes() -> None:
    server = start_metrics_server("127.0.0.1:0")
    assert server is not None
    try:
        reply = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert reply.status_code == 200
        names = {family.name for family in text_string_to_metric_families(reply.text)}
        assert "process_cpu_seconds" in names
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)


def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            start_metrics_server(f"127.0.0.1:{port}")


def test_a_service_refuses_to_start_on_a_taken_metrics_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
        env |= {"INTERLOCK_RATELIMIT_LISTEN": "127.0.0.1:0", "INTERLOCK_RATELIMIT_METRICS_LISTEN": f"127.0.0.1:{port}"}
        done = subprocess.run(
            [sys.executable, "-m", "services.ratelimit"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"ratelimit: invalid settings: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


# -- the gRPC server interceptor and the trailers --------------------------------------------

SERVICE = "test.Probe"


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    context.set_trailing_metadata(((UPSTREAM_MS_KEY, "12.5"), (MODEL_KEY, "demo-chat")))
    if request == b"missing":
        raise NotFoundError("no such thing")
    if request == b"slow":
        await asyncio.sleep(10)
    return b"ok"


async def _stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    yield b"one"
    if request == b"fail":
        context.set_trailing_metadata(((UPSTREAM_MS_KEY, "3"),))
        raise UpstreamError("provider went away")
    context.set_trailing_metadata(((UPSTREAM_MS_KEY, "7.25"), (MODEL_KEY, "demo-chat")))
    yield b"two"


def _add(servicer: object, server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])


@pytest.fixture
async def probe() -> AsyncIterator[GrpcService]:
    service = create_server("127.0.0.1:0", [Registration(_add, None, SERVICE)])
    await service.start()
    yield service
    await service.stop(0)


def handled(method: str, code: str) -> float:
    return value("interlock_grpc_server_handled_total", service=SERVICE, method=method, code=code)


async def test_server_interceptor_counts_final_codes(probe: GrpcService) -> None:
    before = {code: handled("Unary", code) for code in ("OK", "NOT_FOUND", "CANCELLED")}
    count_before = value("interlock_grpc_server_handling_seconds_count", service=SERVICE, method="Unary")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe.port}") as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", None, None)
        assert await unary(b"hi") == b"ok"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(b"missing")
        # The error mapping keeps what the servicer put in the trailers beside the error details.
        trailers: Any = caught.value.trailing_metadata() or ()
        keys = [key for key, _ in trailers]
        assert UPSTREAM_MS_KEY in keys
        assert "grpc-status-details-bin" in keys
        slow = unary(b"slow")
        await asyncio.sleep(0.2)
        slow.cancel()
        for _ in range(50):
            if handled("Unary", "CANCELLED") > before["CANCELLED"]:
                break
            await asyncio.sleep(0.02)
    assert {code: handled("Unary", code) - before[code] for code in before} == {
        "OK": 1,
        "NOT_FOUND": 1,
        "CANCELLED": 1,
    }
    assert value("interlock_grpc_server_handling_seconds_count", service=SERVICE, method="Unary") - count_before == 3


async def test_edge_observers_read_the_trailers(probe: GrpcService) -> None:
    stream_ok = handled("Stream", "OK")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{probe.port}", interceptors=edge_metrics.router_interceptors()
    ) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", None, None)
        stream = channel.unary_stream(f"/{SERVICE}/Stream", None, None)
        with edge_metrics.exchange() as seen:
            assert await unary(b"hi") == b"ok"
        assert (seen.upstream_seconds, seen.model) == (0.0125, "demo-chat")
        with edge_metrics.exchange() as seen, pytest.raises(grpc.aio.AioRpcError):
            await unary(b"missing")
        assert seen.upstream_seconds == 0.0125
        with edge_metrics.exchange() as seen:
            assert [m async for m in stream(b"go")] == [b"one", b"two"]
        assert (seen.upstream_seconds, seen.model) == (0.00725, "demo-chat")
        with edge_metrics.exchange() as seen:
            call = stream(b"fail")
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in call:
                    pass
        assert seen.upstream_seconds == 0.003
        # Outside a request nothing is recorded, and calls work as before.
        assert await unary(b"hi") == b"ok"
    assert handled("Stream", "OK") - stream_ok == 1


# -- the router -------------------------------------------------------------------------------


async def test_upstream_timer_counts_overlapping_waits_once() -> None:
    clock = ManualClock()
    timer = router_metrics.UpstreamTimer(clock)
    with timer.waiting():
        clock.advance(1.0)
        with timer.waiting():  # a hedged attempt
            clock.advance(0.5)
        clock.advance(0.25)
    clock.advance(10.0)  # the router's own time
    with timer.waiting():
        clock.advance(2.0)
    assert timer.seconds == 3.75


async def test_upstream_timer_wraps_a_stream_and_closes_it() -> None:
    clock = ManualClock()
    timer = router_metrics.UpstreamTimer(clock)
    closed = False

    async def provider() -> AsyncGenerator[int, None]:
        nonlocal closed
        try:
            for i in range(3):
                clock.advance(0.1)
                yield i
        finally:
            closed = True

    wrapped = timer.wrap(provider())
    assert await anext(wrapped) == 0
    clock.advance(5.0)  # relaying to the client is not waiting on the provider
    assert await anext(wrapped) == 1
    await wrapped.aclose()
    assert closed
    assert timer.seconds == pytest.approx(0.2)


def test_error_codes_are_bounded() -> None:
    assert router_metrics.error_code(UpstreamError("x", code="provider_timeout")) == "provider_timeout"
    # A provider's own code (any string) falls back to its class's.
    assert router_metrics.error_code(InvalidRequestError("x", code="some_provider_code_123")) == "invalid_request"
    assert router_metrics.error_code(ValueError("bug")) == "internal_error"
    assert router_metrics.error_code(asyncio.CancelledError()) == "cancelled"


def test_a_finished_request_is_counted_under_bounded_labels() -> None:
    labels = {"endpoint": "/v1/chat/completions", "model": "unit-model", "provider": "unit-provider"}
    event = upb.UsageEvent(
        endpoint=labels["endpoint"],
        model="unit-model",
        provider="unit-provider",
        key_id="k_secret",
        request_id="req_1",
        client_ip="10.1.2.3",
        status=upb.STATUS_ERROR,
        error_code="weird_provider_code",
        stream=True,
        ttft_ms=120,
        prompt_tokens=10,
        completion_tokens=0,
        cost_usd=0.5,
    )
    error = UpstreamError("x", code="weird_provider_code")
    watch = router_metrics.RequestMetrics(ManualClock(), labels["endpoint"])
    watch.planned = "unit-planned"
    assert watch.finish(event, error, 2.0) == ((UPSTREAM_MS_KEY, "0.000"), (MODEL_KEY, "unit-model"))
    assert value("interlock_router_requests_total", **labels, status="error", code="upstream_error") == 1
    assert value("interlock_router_request_seconds_sum", **labels) == 2.0
    assert value("interlock_router_overhead_seconds_count", endpoint=labels["endpoint"]) >= 1
    assert value("interlock_router_ttft_seconds_sum", model="unit-model", provider="unit-provider") == 0.12
    assert value("interlock_router_tokens_total", model="unit-model", provider="unit-provider", kind="prompt") == 10
    assert value("interlock_router_cost_usd_total", model="unit-model", provider="unit-provider") == 0.5
    page = "\n".join(str(s) for m in REGISTRY.collect() for s in m.samples)
    assert "k_secret" not in page
    assert "req_1" not in page
    assert "10.1.2.3" not in page


def test_model_label_and_trailers() -> None:
    assert router_metrics.model_label(upb.UsageEvent(model="served"), "planned") == "served"
    assert router_metrics.model_label(upb.UsageEvent(), "planned") == "planned"
    assert router_metrics.model_label(upb.UsageEvent(), "") == "none"
    assert router_metrics.trailers("demo-chat", 0.0125) == ((UPSTREAM_MS_KEY, "12.500"), (MODEL_KEY, "demo-chat"))
    assert router_metrics.trailers("none", 0.0) == ((UPSTREAM_MS_KEY, "0.000"),)


def test_breaker_state_gauge_follows_the_breaker() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock, threshold=2, cooldown_seconds=10)
    key = "unit/breaker-model"

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("interlock_provider_breaker_state", {"deployment": key})

    assert breakers.allows(key)
    assert gauge() == 0
    breakers.failure(key)
    assert gauge() == 0
    breakers.failure(key)
    assert gauge() == 2
    clock.advance(11)
    assert breakers.allows(key)
    assert gauge() == 1
    breakers.begin(key)
    breakers.success(key)
    assert gauge() == 0


# -- ratelimit --------------------------------------------------------------------------------


def test_ratelimit_decisions_name_the_refusing_scope_and_quota() -> None:
    def decisions(decision: str, scope_kind: str, quota_kind: str) -> float:
        return value(
            "interlock_ratelimit_decisions_total", decision=decision, scope_kind=scope_kind, quota_kind=quota_kind
        )

    cases = [
        (("refused", "project", "budget"), Quota("project:budget", Kind.BUDGET, "b:2026-11", 100)),
        (("refused", "ip", "requests"), Quota("ip:chat:requests", Kind.REQUESTS, "r:chat", 5)),
        (("refused", "other", "tokens"), Quota("mystery:tokens", Kind.TOKENS, "t", 5)),
    ]
    for labels, quota in cases:
        before = decisions(*labels)
        rl_metrics.count_decision(False, QuotaOutcome(quota, allowed=False, remaining=0, reset_us=1, retry_us=1))
        assert decisions(*labels) - before == 1
    before = decisions("admitted", "none", "none")
    rl_metrics.count_decision(True)
    assert decisions("admitted", "none", "none") - before == 1
    before = decisions("admitted", "degraded", "degraded")
    rl_metrics.count_degraded(True)
    assert decisions("admitted", "degraded", "degraded") - before == 1


# -- the edge ---------------------------------------------------------------------------------


async def _chat(request: Request) -> Response:
    seen = edge_metrics._current.get()
    assert seen is not None
    seen.heard(((UPSTREAM_MS_KEY, "40"), (MODEL_KEY, "edge-model")))

    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _plain(request: Request) -> Response:
    return PlainTextResponse("fine")


async def _boom(request: Request) -> Response:
    raise RuntimeError("bug")


def _edge_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/v1/models/{model_id:path}", _plain, methods=["GET"]),
            Route("/boom", _boom, methods=["GET"]),
            Route("/metrics", edge_metrics.metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(MetricsMiddleware)],
    )


async def test_edge_middleware_labels_by_route_template() -> None:
    chat = "/v1/chat/completions"
    model_route = "/v1/models/{model_id:path}"
    before = {
        "chat": value("interlock_http_requests_total", route=chat, method="POST", status="200"),
        "model": value("interlock_http_requests_total", route=model_route, method="GET", status="200"),
        "other": value("interlock_http_requests_total", route="other", method="GET", status="404"),
        "boom": value("interlock_http_requests_total", route="/boom", method="GET", status="500"),
        "ttft": value("interlock_http_ttft_seconds_count", route=chat, model="edge-model"),
        "overhead": value("interlock_gateway_overhead_seconds_count", route=chat),
        "by_model": value("interlock_http_responses_by_model_total", route=chat, model="edge-model", status="200"),
        "model_overhead": value("interlock_gateway_overhead_seconds_count", route=model_route),
    }
    transport = httpx.ASGITransport(app=_edge_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        assert (await client.post(chat)).status_code == 200
        assert (await client.get("/v1/models/some/model-id")).status_code == 200
        assert (await client.get("/not/a/route")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
        page = await client.get("/metrics")
    assert page.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value("interlock_http_requests_total", route=chat, method="POST", status="200") - before["chat"] == 1
    assert value("interlock_http_requests_total", route=model_route, method="GET", status="200") - before["model"] == 1
    assert value("interlock_http_requests_total", route="other", method="GET", status="404") - before["other"] == 1
    assert value("interlock_http_requests_total", route="/boom", method="GET", status="500") - before["boom"] == 1
    assert value("interlock_http_ttft_seconds_count", route=chat, model="edge-model") - before["ttft"] == 1
    assert value("interlock_gateway_overhead_seconds_count", route=chat) - before["overhead"] == 1
    assert (
        value("interlock_http_responses_by_model_total", route=chat, model="edge-model", status="200")
        - before["by_model"]
        == 1
    )
    # Requests that never reached the router have no overhead to report.
    assert value("interlock_gateway_overhead_seconds_count", route=model_route) == before["model_overhead"]
    routes = {
        s.labels["route"]
        for family in text_string_to_metric_families(page.text)
        for s in family.samples
        if s.name == "interlock_http_requests_total"
    }
    assert "/not/a/route" not in routes
    assert "/v1/models/some/model-id" not in routes
