"""Routing and failover against two fake providers: the attempts list tells the story."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import UPSTREAM_KEY
from tests.support.fake_openai import FakeOpenAI
from tests.support.stack import MODES, Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi"}]
DEADLINE_SECONDS = 3
COOLDOWN_SECONDS = 1.0


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI(required_api_key=UPSTREAM_KEY) as a, FakeOpenAI(required_api_key=UPSTREAM_KEY) as b:
        yield a, b


@pytest.fixture
def pa(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[FakeOpenAI]:
    fakes[0].reset()
    yield fakes[0]
    fakes[0].reset()


@pytest.fixture
def pb(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[FakeOpenAI]:
    fakes[1].reset()
    yield fakes[1]
    fakes[1].reset()


# Failover is in the core subset that runs in both modes.
@pytest.fixture(scope="module", params=MODES)
def routing_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> Iterator[Stack]:
    a, b = fakes
    provider = {"kind": "openai", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_seconds": 1}
    chat = {"type": "chat", "pricing": {"input": 1.0, "output": 1.0}}

    def tiers(first: str, second: str) -> list[dict[str, Any]]:
        return [{"provider": first, "priority": 0}, {"provider": second, "priority": 1}]

    catalog: dict[str, Any] = {
        "providers": {
            "demo": {"kind": "demo"},
            "pa": {**provider, "base_url": a.base_url},
            "pb": {**provider, "base_url": b.base_url},
            # Separate breakers for tests that leave one open.
            "qa": {**provider, "base_url": a.base_url},
            "sa": {**provider, "base_url": a.base_url},
            "qb": {**provider, "base_url": b.base_url},
        },
        "models": [
            {**chat, "id": "pair", "deployments": tiers("pa", "pb")},
            {**chat, "id": "guarded", "deployments": tiers("qa", "qb")},
            {**chat, "id": "hedged", "hedging": True, "deployments": tiers("pa", "pb")},
            {**chat, "id": "on-a", "deployments": [{"provider": "pa"}]},
            {**chat, "id": "slow-a", "deployments": [{"provider": "sa"}]},
            {**chat, "id": "slow-pair", "deployments": tiers("sa", "pb")},
            {**chat, "id": "on-b", "deployments": [{"provider": "pb"}]},
            {"id": "pricey-a", "type": "chat", "quality": 9, "pricing": {"input": 100.0, "output": 100.0},
             "deployments": [{"provider": "pa"}]},
            {"id": "thrifty-b", "type": "chat", "quality": 1, "pricing": {"input": 0.1, "output": 0.1},
             "deployments": [{"provider": "pb"}]},
        ],
        "profiles": [
            {"id": "router:fast-test", "strategy": "fast", "candidates": ["on-a", "on-b"]},
            {"id": "router:best-test", "strategy": "quality", "candidates": ["pricey-a", "thrifty-b"]},
            {"id": "router:cheap-test", "strategy": "cheap", "candidates": ["pricey-a", "thrifty-b"]},
        ],
    }  # fmt: skip
    root = tmp_path_factory.mktemp("routing")
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    stack = start_stack(
        root / "data",
        config=root / "catalog.yaml",
        env={
            "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
            "INTERLOCK_ROUTER_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
            "INTERLOCK_ROUTER_BREAKER_FAILURES": "2",
            "INTERLOCK_ROUTER_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
            "INTERLOCK_ROUTER_BACKOFF_BASE_MS": "10",
            "INTERLOCK_ROUTER_BACKOFF_MAX_MS": "50",
            "INTERLOCK_ROUTER_EXPLORE_RATE": "0",
        },
        mode=request.param,
        # One worker: breakers and latency stats live in each router process, and these tests
        # follow one router's (each co-located worker has its own, as router replicas do).
        workers=1 if request.param == "colocated" else None,
    )
    yield stack
    stop_stack(stack)


def ask(stack: Stack, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={"model": model, "messages": HI, **extra},
        timeout=30,
    )


def story(response: httpx.Response) -> list[tuple[str, str]]:
    routing = response.json()["routing_decision"]
    return [(a["provider"], a["outcome"]) for a in routing["attempts"]]


def test_failover_to_the_next_deployment(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.fail_next(500, times=1000)
    response = ask(routing_stack, "pair")
    assert response.status_code == 200, response.text
    assert response.json()["routing_decision"]["provider"] == "pb"
    assert story(response)[0] == ("pa", "upstream_error") and story(response)[-1] == ("pb", "ok")


def test_client_errors_are_not_retried(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.fail_next(400, times=1000)
    response = ask(routing_stack, "pair")
    assert response.status_code == 400
    assert len(pa.requests) == 1 and pb.requests == []


def test_a_hanging_provider_times_out_and_the_next_answers(
    routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI
) -> None:
    pa.first_token_delay = 5  # the provider timeout is 1 s
    started = time.monotonic()
    response = ask(routing_stack, "slow-a")  # only one deployment: it can only time out
    assert response.status_code == 504
    assert response.json()["error"]["code"] in ("provider_timeout", "deadline_exceeded")
    assert time.monotonic() - started < DEADLINE_SECONDS + 1.5  # no request outlives its deadline
    rescued = ask(routing_stack, "slow-pair")
    assert rescued.status_code == 200 and story(rescued)[-1] == ("pb", "ok")


def test_429_with_retry_after_moves_on_and_keeps_away(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.fail_next(429, times=1, retry_after="2")
    first = ask(routing_stack, "pair")
    assert first.status_code == 200 and story(first) == [("pa", "upstream_rate_limited"), ("pb", "ok")]
    second = ask(routing_stack, "pair")  # within Retry-After: pa is not asked at all
    assert story(second) == [("pb", "ok")]
    assert len(pa.requests) == 1


def test_provider_dying_before_the_first_byte_fails_over(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.die_mid_stream_after(0)
    chunks = []
    with httpx.stream(
        "POST", f"{routing_stack.base_url}/chat/completions", headers=routing_stack.headers(),
        json={"model": "pair", "messages": HI, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        chunks = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "data: [DONE]"
    assert '"provider":"pb"' in chunks[0]


def test_breaker_opens_and_recovers(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.fail_next(503, times=2)  # two consecutive failures open qa's breaker
    first = ask(routing_stack, "guarded")
    assert story(first)[:2] == [("qa", "upstream_error"), ("qb", "ok")]
    second = ask(routing_stack, "guarded")
    assert story(second)[0] == ("qa", "upstream_error")
    asked = len(pa.requests)
    third = ask(routing_stack, "guarded")
    assert story(third) == [("qb", "ok")] and len(pa.requests) == asked  # open: qa is kept out of the path
    time.sleep(COOLDOWN_SECONDS + 0.2)
    probe = ask(routing_stack, "guarded")  # half-open: one probe, and qa is healthy again
    assert story(probe) == [("qa", "ok")]
    assert story(ask(routing_stack, "guarded")) == [("qa", "ok")]


def test_router_fast_follows_measured_latency(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    pa.first_token_delay, pb.first_token_delay = 0.12, 0.01
    served = [ask(routing_stack, "router:fast-test").json()["routing_decision"]["provider"] for _ in range(24)]
    assert served[-12:].count("pb") >= 11, served
    pa.first_token_delay, pb.first_token_delay = 0.01, 0.2  # b slows down: traffic should move back
    served = [ask(routing_stack, "router:fast-test").json()["routing_decision"]["provider"] for _ in range(24)]
    assert served[-12:].count("pa") >= 11, served


def test_quality_cheap_cost_ceiling_and_provider_hints(routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI) -> None:
    assert ask(routing_stack, "router:best-test").json()["routing_decision"]["model"] == "pricey-a"
    assert ask(routing_stack, "router:cheap-test").json()["routing_decision"]["model"] == "thrifty-b"
    capped = ask(routing_stack, "router:best-test", route={"cost_ceiling_usd": 0.001})
    assert capped.json()["routing_decision"]["model"] == "thrifty-b"
    impossible = ask(routing_stack, "pricey-a", route={"cost_ceiling_usd": 0.000001})
    assert impossible.status_code == 400 and impossible.json()["error"]["code"] == "cost_ceiling_exceeded"
    preferred = ask(routing_stack, "pair", route={"provider": "pb"})
    assert story(preferred) == [("pb", "ok")]
    fallback = ask(routing_stack, "on-a", route={"fallback": ["on-b"]})
    assert fallback.json()["routing_decision"]["provider"] == "pa"
    pa.fail_next(500, times=1000)
    rescued = ask(routing_stack, "on-a", route={"fallback": ["on-b"]})
    assert rescued.status_code == 200 and rescued.json()["routing_decision"]["model"] == "on-b"


def test_hedged_stream_returns_at_the_secondary_latency_and_cancels_the_primary(
    routing_stack: Stack, pa: FakeOpenAI, pb: FakeOpenAI
) -> None:
    pa.first_token_delay = 0.9  # slow primary, still within its 1 s timeout
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{routing_stack.base_url}/chat/completions", headers=routing_stack.headers(),
        json={"model": "hedged", "messages": HI, "stream": True, "route": {"latency_budget_ms": 150}},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        first_line = next(line for line in lines if line.startswith("data: "))
        first_at = time.monotonic() - started
        rest = [line for line in lines if line.startswith("data: ")]
    assert first_at < 0.7, first_at  # about budget + the secondary's latency, not the primary's 0.9 s
    assert '"provider":"pb"' in first_line and rest[-1] == "data: [DONE]"
    deadline = time.monotonic() + 3
    while pa.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pa.cancelled == 1  # the primary's upstream call was cancelled, not left running
    hedged = ask(routing_stack, "hedged", route={"latency_budget_ms": 150})
    # Attempts are listed as they end: the secondary's success, then the primary's cancellation.
    assert sorted(a[1] for a in story(hedged)) in (["cancelled", "ok"], ["ok"])
