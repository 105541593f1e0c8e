"""Seed 003's limits, configured on a ratelimit process of their own: per
endpoint class (standard 60/min, chat 20/min, embeddings 100/min) applied per
API key and per client IP, and an overall per-IP limit. Client IPs come from
X-Forwarded-For, which the edge trusts from loopback (where Envoy sits)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.limits import auth, chat_body, create_key, create_project, fire
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("rules")
    env = {"INTERLOCK_RATELIMIT_ENDPOINT_RPM": "default=60,chat=20,embeddings=100", "INTERLOCK_RATELIMIT_IP_RPM": "30"}
    ratelimit, addr = stack.start_ratelimit(logs / "ratelimit.log", env)
    edge_process, url = stack.start_extra_edge(logs / "edge.log", ratelimit_addr=addr)
    yield url
    for process in (edge_process, ratelimit):
        process.terminate()
        process.wait(10)


def ip() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def chat(edge: str, secret: str, client_ip: str) -> httpx.Response:
    return httpx.post(f"{edge}/v1/chat/completions", json=chat_body(), headers=auth(secret, client_ip), timeout=10)


def admitted_within(codes: list[int], limit: int, per_minute: int, started: float) -> None:
    """limit admitted at once, plus at most what dripped back while the requests ran."""
    dripped = int((time.monotonic() - started) * per_minute / 60) + 1
    admitted = codes.count(200)
    assert limit <= admitted <= limit + dripped, codes
    assert codes.count(429) == len(codes) - admitted, codes


async def test_chat_is_limited_per_key_to_20_a_minute(stack: Stack, edge: str) -> None:
    secret = create_key(stack, [edge], requests_per_minute=1000)
    # A new IP each time: only the key's own chat limit can bind.
    started = time.monotonic()
    replies = await fire([("POST", f"{edge}/v1/chat/completions", chat_body(), auth(secret, ip())) for _ in range(30)])
    admitted_within([r.status_code for r in replies], 20, 20, started)
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "key:chat:requests" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-limit"] == "20"
    # Other classes have their own limits: embeddings (100) and the standard 60 for the rest.
    others = await fire(
        [
            ("POST", f"{edge}/v1/embeddings", {"model": "demo-embed", "input": "hi"}, auth(secret, ip())),
            ("GET", f"{edge}/v1/models", None, auth(secret, ip())),
        ]
    )
    assert [r.status_code for r in others] == [200, 200]


async def test_embeddings_have_their_own_100_a_minute(stack: Stack, edge: str) -> None:
    secret = create_key(stack, [edge], requests_per_minute=1000)
    body = {"model": "demo-embed", "input": "hi"}
    started = time.monotonic()
    replies = await fire([("POST", f"{edge}/v1/embeddings", body, auth(secret, ip())) for _ in range(120)])
    admitted_within([r.status_code for r in replies], 100, 100, started)
    refused = next(r for r in replies if r.status_code == 429)
    assert "key:embeddings:requests" in refused.json()["error"]["message"]


async def test_one_ip_shares_its_chat_limit_across_keys(stack: Stack, edge: str) -> None:
    keys = [create_key(stack, [edge], requests_per_minute=1000) for _ in range(3)]
    shared = ip()
    started = time.monotonic()
    replies = await fire(
        [("POST", f"{edge}/v1/chat/completions", chat_body(), auth(keys[i % 3], shared)) for i in range(30)]
    )
    admitted_within([r.status_code for r in replies], 20, 20, started)
    refused = next(r for r in replies if r.status_code == 429)
    assert "ip:chat:requests" in refused.json()["error"]["message"]
    # Another address is untouched.
    assert chat(edge, keys[0], ip()).status_code == 200


async def test_an_ip_has_an_overall_limit_over_every_endpoint(stack: Stack, edge: str) -> None:
    secret = create_key(stack, [edge], requests_per_minute=1000)
    shared = ip()
    started = time.monotonic()
    replies = await fire([("GET", f"{edge}/v1/models", None, auth(secret, shared)) for _ in range(40)])
    admitted_within([r.status_code for r in replies], 30, 30, started)
    refused = next(r for r in replies if r.status_code == 429)
    assert "ip:requests" in refused.json()["error"]["message"]


async def test_a_project_limit_binds_all_its_keys_together(stack: Stack, edge: str) -> None:
    project = create_project(stack, name="limited", requests_per_minute=5)
    keys = [create_key(stack, [edge], project=project, requests_per_minute=1000) for _ in range(2)]
    started = time.monotonic()
    replies = await fire(
        [("POST", f"{edge}/v1/chat/completions", chat_body(), auth(keys[i % 2], ip())) for i in range(10)]
    )
    admitted_within([r.status_code for r in replies], 5, 5, started)
    refused = next(r for r in replies if r.status_code == 429)
    assert "project:requests" in refused.json()["error"]["message"]
