"""Prometheus /metrics on the edge and on every service, scraped and parsed the
way Prometheus would: names, label sets, and histograms that moved by exactly
the requests sent. On the session stack (co-located) the router runs inside each
edge worker, so its metrics are on that worker's own /metrics, and the requests
go to that worker's own port, so that they are all counted there."""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.limits import auth, chat_body, create_key
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
SERVICES = ("catalog", "router", "ratelimit", "usage")


@dataclass
class Scrape:
    families: dict[str, str]  # family name -> type
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sum of name's samples whose labels include these (0 when there are none)."""
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def scrape(url: str) -> Scrape:
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(reply.text))
    return Scrape({f.name: f.type for f in families}, [s for f in families for s in f.samples])


def assert_histogram_moved(before: Scrape, after: Scrape, name: str, by: int, **labels: str) -> None:
    """The one series these labels pick: count moved by exactly `by`, buckets never
    fall as le rises, and the +Inf bucket equals the count."""
    picked = [s for s in after.series(f"{name}_count") if all(s.get(k) == v for k, v in labels.items())]
    assert len(picked) == 1, (name, labels, picked)
    count = after.value(f"{name}_count", **labels)
    assert count - before.value(f"{name}_count", **labels) == by, (name, labels)
    assert after.value(f"{name}_sum", **labels) >= before.value(f"{name}_sum", **labels)
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in after.samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )
    counts = [n for _, n in buckets]
    assert counts == sorted(counts), (name, buckets)
    assert buckets[-1] == (math.inf, count), (name, buckets)


@pytest.fixture
def scrapes(stack: Stack) -> dict[str, str]:
    urls = {name: stack.metrics_url(name) for name in ("edge", *SERVICES)}
    for url in urls.values():
        assert url.startswith("http://")
    return urls


def chat(stack: Stack, model: str, *, stream: bool = False, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {**chat_body(model=model), "stream": stream}
    with httpx.Client(timeout=30) as client:
        url = f"{stack.one_edge_url}/v1/chat/completions"
        reply = client.post(url, json=body, headers=headers or stack.headers())
        reply.read()
    return reply


def test_every_process_serves_metrics(stack: Stack, scrapes: dict[str, str]) -> None:
    for name, url in scrapes.items():
        page = scrape(url)
        # The default registry: process metrics come with it.
        assert "process_cpu_seconds" in page.families, name
        # Co-located, the router's page is the edge worker's, which has served no gRPC call yet.
        if name != "edge" and not (name == "router" and stack.mode == "colocated"):
            assert page.families["interlock_grpc_server_handled"] == "counter", name
            assert page.families["interlock_grpc_server_handling_seconds"] == "histogram", name
    edge = scrape(scrapes["edge"])
    if stack.mode == "colocated":
        # The router's page is the edge worker's own, and the router serves its gRPC API there too.
        assert scrapes["router"] == scrapes["edge"]
        assert "interlock_router_requests" in edge.families
    else:
        assert "interlock_grpc_server_handled" not in edge.families


def test_requests_are_counted_everywhere(stack: Stack, scrapes: dict[str, str]) -> None:
    before = {name: scrape(url) for name, url in scrapes.items()}
    ok = [chat(stack, "demo-chat"), chat(stack, "demo-chat"), chat(stack, "demo-chat", stream=True)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    failed = chat(stack, "dead-chat")  # nothing listens behind its provider
    assert failed.status_code >= 500
    assert httpx.get(f"{stack.one_edge_url}/no/such/path", timeout=10).status_code == 404
    after = {name: scrape(url) for name, url in scrapes.items()}

    edge_before, edge = before["edge"], after["edge"]

    def edge_delta(name: str, **labels: str) -> float:
        return edge.value(name, **labels) - edge_before.value(name, **labels)

    assert edge_delta("interlock_http_requests_total", route=CHAT, method="POST", status="200") == 3
    assert edge_delta("interlock_http_requests_total", route=CHAT, method="POST", status=str(failed.status_code)) == 1
    assert edge_delta("interlock_http_requests_total", route="other", method="GET", status="404") == 1
    assert_histogram_moved(edge_before, edge, "interlock_http_request_seconds", 4, route=CHAT)
    assert_histogram_moved(edge_before, edge, "interlock_http_ttft_seconds", 1, route=CHAT, model="demo-chat")
    # Every chat request reached the router, which said how long it waited on providers.
    assert_histogram_moved(edge_before, edge, "interlock_gateway_overhead_seconds", 4, route=CHAT)
    overhead = edge_delta("interlock_gateway_overhead_seconds_sum", route=CHAT)
    total = edge_delta("interlock_http_request_seconds_sum", route=CHAT)
    assert 0 < overhead < total
    assert edge_delta("interlock_http_responses_by_model_total", route=CHAT, model="demo-chat", status="200") == 3
    assert (
        edge_delta(
            "interlock_http_responses_by_model_total", route=CHAT, model="dead-chat", status=str(failed.status_code)
        )
        == 1
    )
    # Route templates only: a raw path never becomes a label.
    assert {labels["route"] for labels in edge.series("interlock_http_requests_total")} >= {CHAT, "other", "/metrics"}
    assert not any("/no/such" in value for s in edge.samples for value in s.labels.values())

    router_before, router = before["router"], after["router"]

    def router_delta(name: str, **labels: str) -> float:
        return router.value(name, **labels) - router_before.value(name, **labels)

    demo = {"model": "demo-chat", "provider": "demo"}
    assert router_delta("interlock_router_requests_total", endpoint=CHAT, status="ok", code="", **demo) == 3
    assert (
        router_delta(
            "interlock_router_requests_total",
            endpoint=CHAT,
            model="dead-chat",
            provider="dead",
            status="error",
            code="provider_unavailable",
        )
        == 1
    )
    assert_histogram_moved(router_before, router, "interlock_router_request_seconds", 3, endpoint=CHAT, **demo)
    assert_histogram_moved(router_before, router, "interlock_router_ttft_seconds", 1, **demo)
    assert_histogram_moved(router_before, router, "interlock_router_overhead_seconds", 4, endpoint=CHAT)
    assert router_delta("interlock_router_tokens_total", kind="prompt", **demo) > 0
    assert router_delta("interlock_router_tokens_total", kind="completion", **demo) > 0
    assert router_delta("interlock_router_cost_usd_total", **demo) > 0
    assert (
        router_delta(
            "interlock_router_upstream_attempts_total", provider="demo", deployment="demo/demo-chat", outcome="ok"
        )
        == 3
    )
    assert (
        router_delta(
            "interlock_router_upstream_attempts_total",
            provider="dead",
            deployment="dead/x",
            outcome="provider_unavailable",
        )
        >= 1
    )
    breakers = {labels["deployment"] for labels in router.series("interlock_provider_breaker_state")}
    assert {"demo/demo-chat", "dead/x"} <= breakers
    # The session stack keeps breakers closed (its failure threshold is high).
    assert router.value("interlock_provider_breaker_state", deployment="dead/x") == 0
    service = "interlock.router.v1.RouterService"
    if stack.mode == "colocated":
        # The edge called the router in its own process: no gRPC call was served for these requests.
        assert router_delta("interlock_grpc_server_handled_total", service=service) == 0
    else:
        assert router_delta("interlock_grpc_server_handled_total", service=service, method="Chat", code="OK") == 2
        assert router_delta("interlock_grpc_server_handled_total", service=service, method="ChatStream", code="OK") == 1
        assert (
            router_delta("interlock_grpc_server_handled_total", service=service, method="Chat", code="UNAVAILABLE") == 1
        )
        assert_histogram_moved(
            router_before, router, "interlock_grpc_server_handling_seconds", 3, service=service, method="Chat"
        )
    # The usage service is up: nothing waits in the router's spool.
    assert "interlock_usage_spool_events" in router.families
    assert router.value("interlock_usage_spool_events") == 0
    assert "interlock_usage_pending_events" in router.families

    # Every chat request was admitted at the edge: from this worker's quota leases, or by one
    # Check call, which the ratelimit service counts as its own decision.
    from_lease = edge_delta("interlock_edge_admissions_total", path="lease", outcome="admitted")
    by_check = edge_delta("interlock_edge_admissions_total", path="check", outcome="admitted")
    assert from_lease + by_check == 4
    limits_before, limits = before["ratelimit"], after["ratelimit"]
    admitted = {"decision": "admitted", "scope_kind": "none", "quota_kind": "none"}
    assert (
        limits.value("interlock_ratelimit_decisions_total", **admitted)
        - limits_before.value("interlock_ratelimit_decisions_total", **admitted)
        == by_check
    )
    if by_check:
        assert_histogram_moved(limits_before, limits, "interlock_ratelimit_check_seconds", int(by_check), api="check")
    # The session key's roomy plan is leased: the edges' claims are counted there.
    assert limits.value("interlock_ratelimit_lease_claims_total", result="granted") > 0
    assert "interlock_ratelimit_backend_failures" in limits.families

    # The other services: their RPCs (interlock up's health checks at least) are counted too.
    for name in ("catalog", "usage"):
        handled = after[name].series("interlock_grpc_server_handled_total")
        assert {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"} in handled, name


def test_refusals_name_the_binding_scope_and_quota(stack: Stack, scrapes: dict[str, str]) -> None:
    secret = create_key(stack, [stack.url], requests_per_minute=1, burst=1)
    before = scrape(scrapes["ratelimit"])
    first = chat(stack, "demo-chat", headers=auth(secret))
    second = chat(stack, "demo-chat", headers=auth(secret))
    assert (first.status_code, second.status_code) == (200, 429)
    after = scrape(scrapes["ratelimit"])
    refused = {"decision": "refused", "scope_kind": "key", "quota_kind": "requests"}
    assert (
        after.value("interlock_ratelimit_decisions_total", **refused)
        - before.value("interlock_ratelimit_decisions_total", **refused)
        == 1
    )
    # No key ids in labels.
    assert not any(value.startswith("key:") for s in after.samples for value in s.labels.values())
