"""X-Interlock-Overhead-Ms: the gateway's own time on every response the router had a
part in (the edge's time minus the router's wait on providers), before the body."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

HEADER = "x-interlock-overhead-ms"
HI = [{"role": "user", "content": "hi"}]


def _overhead_ms(response: httpx.Response) -> float:
    value = float(response.headers[HEADER])
    assert value >= 0
    return value


def test_non_stream_response_carries_overhead_below_total(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.first_token_delay = 0.2
    started = time.perf_counter()
    response = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "fake-chat", "messages": HI}
    )
    total_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    overhead = _overhead_ms(response)
    assert overhead < total_ms
    # The provider's 200 ms are the provider's, not the gateway's.
    assert overhead < total_ms - 150


def test_demo_and_error_responses_from_the_router_carry_it_too(stack: Stack, upstream: FakeOpenAI) -> None:
    demo = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "demo-chat", "messages": HI}
    )
    assert demo.status_code == 200
    _overhead_ms(demo)
    unreachable = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "dead-chat", "messages": HI}
    )
    assert unreachable.status_code >= 500
    _overhead_ms(unreachable)


def test_responses_the_router_never_saw_do_not(stack: Stack) -> None:
    assert HEADER not in httpx.get(f"{stack.base_url}/models", headers=stack.headers()).headers
    refused = httpx.post(f"{stack.base_url}/chat/completions", json={"model": "fake-chat", "messages": HI})
    assert refused.status_code == 401 and HEADER not in refused.headers


def test_stream_overhead_excludes_the_providers_time_to_first_token(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.first_token_delay = 0.3
    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", headers=stack.headers(),
        json={"model": "fake-chat", "messages": HI, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        ttft_ms = (time.perf_counter() - started) * 1000
        overhead = _overhead_ms(response)
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert ttft_ms >= 300
    # The header is set when the first byte goes out: the provider's 300 ms to it are not in it.
    assert overhead < ttft_ms - 250
