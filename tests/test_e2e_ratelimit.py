"""Quotas across replicas: two ratelimit processes sharing the machine's real
Redis, each behind its own edge, hit at once by hundreds of requests."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import auth, chat_body, create_key, fire
from tests.support.stack import Stack, stack_in_each_mode

pytestmark = pytest.mark.e2e
# Limits are in the core subset that runs in both modes.
stack = stack_in_each_mode()
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Replicas:
    edges: list[str]
    ratelimits: list[str]


@pytest.fixture(scope="module")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    logs = tmp_path_factory.mktemp("replicas")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    env = {"INTERLOCK_RATELIMIT_REDIS_URL": REDIS_URL, "INTERLOCK_RATELIMIT_REDIS_PREFIX": prefix}
    processes: list[subprocess.Popen[bytes]] = []
    edges, addrs = [], []
    try:
        for i in range(2):
            process, addr = stack.start_ratelimit(logs / f"ratelimit{i}.log", env)
            processes.append(process)
            edge, url = stack.start_extra_edge(logs / f"edge{i}.log", ratelimit_addr=addr)
            processes.append(edge)
            edges.append(url)
            addrs.append(addr)
        yield Replicas(edges, addrs)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()


def error_code(reply: httpx.Response) -> str:
    return str(reply.json()["error"]["code"])


async def test_exactly_n_requests_are_admitted_across_two_replicas(stack: Stack, replicas: Replicas) -> None:
    limit, total = 50, 300
    # A burst of 50 that refills one a minute: the test is over long before one drips back.
    secret = create_key(stack, replicas.edges, requests_per_minute=1, burst=limit)
    requests = [
        ("POST", f"{replicas.edges[i % 2]}/v1/chat/completions", chat_body(), auth(secret)) for i in range(total)
    ]
    started = time.time()
    replies = await fire(requests)
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert (len(ok), len(refused)) == (limit, total - limit), {r.status_code for r in replies}
    # Each admission took one unit: the remaining counts seen run from 49 down to 0. (Two
    # replicas read their clocks a moment before Redis orders their scripts, so a count can
    # show one lower than its neighbour's; never more than one.)
    remaining = sorted(int(r.headers["x-ratelimit-remaining"]) for r in ok)
    assert remaining[0] == 0 and remaining[-1] == limit - 1
    assert all(abs(seen - i) <= 1 for i, seen in enumerate(remaining)), remaining
    for reply in refused:
        assert reply.json()["error"]["type"] == "rate_limit_error"
        assert error_code(reply) == "rate_limit_exceeded"
        assert reply.headers["x-ratelimit-limit"] == str(limit)
        assert reply.headers["x-ratelimit-remaining"] == "0"
        assert int(reply.headers["x-ratelimit-reset"]) >= int(started)
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.headers["x-ratelimit-limit-requests"] == str(limit)
        assert reply.headers["x-request-id"]


async def test_concurrent_token_reservations_never_exceed_the_limit(
    stack: Stack, replicas: Replicas, upstream: FakeOpenAI
) -> None:
    # Each request reserves its prompt (about a dozen tokens) plus max_tokens 1000; 5000 a
    # minute fit four such reservations. The slow upstream keeps all four held while the
    # rest arrive, so settling cannot free room early.
    upstream.first_token_delay = 2.0
    secret = create_key(stack, replicas.edges, requests_per_minute=100000, tokens_per_minute=5000)
    body = chat_body(max_tokens=1000, model="fake-chat")
    requests = [("POST", f"{replicas.edges[i % 2]}/v1/chat/completions", body, auth(secret)) for i in range(40)]
    replies = await fire(requests)
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert (len(ok), len(refused)) == (4, 36), [r.status_code for r in replies]
    for reply in refused:
        assert error_code(reply) == "rate_limit_exceeded"
        assert "tokens" in reply.json()["error"]["message"]
        assert reply.headers["x-ratelimit-limit-tokens"] == "5000"
        assert int(reply.headers["x-ratelimit-remaining-tokens"]) < 1000
        assert int(reply.headers["retry-after"]) >= 1


async def test_checks_on_two_processes_share_token_and_budget_limits(replicas: Replicas) -> None:
    key_id = f"k-{uuid.uuid4().hex[:8]}"
    channels = [grpc.aio.insecure_channel(addr) for addr in replicas.ratelimits]
    stubs = [ratelimit_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    try:

        def check(i: int, **fields: object) -> rpb.CheckRequest:
            return rpb.CheckRequest(key_id=key_id, endpoint="/v1/chat/completions", reservation_id=f"r{i}", **fields)  # type: ignore[arg-type]

        tokens = rpb.Limits(tokens_per_minute=6000)
        replies = await asyncio.gather(
            *(stubs[i % 2].Check(check(i, key_limits=tokens, reserve_tokens=1000)) for i in range(200))
        )
        assert sum(r.allowed for r in replies) == 6
        assert {r.exceeded for r in replies if not r.allowed} == {rpb.QUOTA_KIND_TOKENS}

        budget = rpb.Limits(budget_usd=1.0, budget_period="monthly")
        key_id = f"k-{uuid.uuid4().hex[:8]}"
        replies = await asyncio.gather(
            *(stubs[i % 2].Check(check(1000 + i, key_limits=budget, reserve_usd=0.07)) for i in range(200))
        )
        assert sum(r.allowed for r in replies) == 14  # 14 * 0.07 = 0.98 of the 1.00 cap
        refused = [r for r in replies if not r.allowed]
        assert {r.exceeded for r in refused} == {rpb.QUOTA_KIND_BUDGET}
        assert all(r.quota == "key:budget" and r.remaining == 20_000_000 for r in refused)  # 0.02 USD left
        # Settling one at its real cost frees the rest of its reservation for another.
        admitted = [i for i, r in enumerate(replies) if r.allowed]
        settled = await stubs[0].Settle(
            rpb.SettleRequest(check=check(1000 + admitted[0], key_limits=budget, reserve_usd=0.07), used_usd=0.01)
        )
        assert settled.settled
        again = await stubs[1].Check(check(5000, key_limits=budget, reserve_usd=0.07))
        assert again.allowed
        # A batch settles several at once (as edges send them); an unknown one is not counted.
        batch = rpb.SettleBatchRequest(
            settles=[
                rpb.SettleRequest(check=check(1000 + i, key_limits=budget, reserve_usd=0.07), used_usd=0.01)
                for i in admitted[1:4]
            ]
            + [rpb.SettleRequest(check=check(999_999, key_limits=budget, reserve_usd=0.07))]
        )
        assert (await stubs[1].SettleBatch(batch)).settled == 3
        # 3 x 0.06 freed: exactly enough for two more 0.07 reservations, not three.
        more = [await stubs[i % 2].Check(check(6000 + i, key_limits=budget, reserve_usd=0.07)) for i in range(3)]
        assert [r.allowed for r in more] == [True, True, False]
    finally:
        for channel in channels:
            await channel.close(grace=None)


def test_headers_on_every_response(stack: Stack) -> None:
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=chat_body(), headers=stack.headers(), timeout=10)
    assert reply.status_code == 200, reply.text
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert reply.headers[name].isdigit(), name
    assert int(reply.headers["x-ratelimit-reset"]) >= int(time.time())
    assert reply.headers["x-ratelimit-limit-requests"] == reply.headers["x-ratelimit-limit"]
    assert reply.headers["x-ratelimit-limit-tokens"] == "1000000000"
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) < 1_000_000_000
    assert reply.headers["x-ratelimit-reset-tokens"].endswith("s")
    listing = httpx.get(f"{stack.base_url}/models", headers=stack.headers(), timeout=10)
    assert listing.headers["x-ratelimit-remaining"].isdigit()


def test_a_budget_cap_refuses_with_insufficient_quota(stack: Stack, tmp_path: Path) -> None:
    cap = 0.0002
    secret = create_key(stack, [stack.url], budget_usd=cap)
    spent = 0.0
    for _ in range(200):
        reply = httpx.post(
            f"{stack.base_url}/chat/completions", json=chat_body(max_tokens=50), headers=auth(secret), timeout=10
        )
        if reply.status_code == 429:
            break
        assert reply.status_code == 200, reply.text
        spent += reply.json()["usage"]["cost_usd"]
        time.sleep(0.05)  # the settle runs after the response
    else:
        pytest.fail("the budget never ran out")
    assert reply.json()["error"]["code"] == "insufficient_quota"
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert 0 < spent <= cap
