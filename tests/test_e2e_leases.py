"""The lease rule end to end: several edge processes admitting from quota leases
under random concurrent load, on keys with random limits, against memory and
Redis ratelimit backends, never admit more than a limit allows (counted in the
200s and in the usage ledger) and admit at least the limit less one grant per
edge when demand exceeds it; a revoked key and a lowered limit take effect
within about a lease lifetime."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from tests.support.limits import auth, chat_body, create_key_record
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
REDIS_URL = "redis://127.0.0.1:6379/0"
EDGES = 3
# The service splits what is left among the holders, so a grant is at most half the bucket
# with one holder; with EDGES holders each holds at most limit / 2.
LOAD_SECONDS = 4.0


@dataclass
class Fleet:
    edges: list[str]


@pytest.fixture(scope="module", params=["memory", "redis"])
def fleet(request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp(f"leases-{request.param}")
    prefix = f"lease-e2e-{uuid.uuid4().hex[:8]}"
    env = {"INTERLOCK_RATELIMIT_REDIS_URL": REDIS_URL, "INTERLOCK_RATELIMIT_REDIS_PREFIX": prefix}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        process, addr = stack.start_ratelimit(logs / "ratelimit.log", env if request.param == "redis" else {})
        processes.append(process)
        edges = []
        for i in range(EDGES):
            edge, url = stack.start_extra_edge(logs / f"edge{i}.log", ratelimit_addr=addr)
            processes.append(edge)
            edges.append(url)
        yield Fleet(edges)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()


async def load(edges: list[str], secret: str, seconds: float, concurrency: int) -> list[int]:
    """Requests from `concurrency` clients spread at random over the edges for `seconds`."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    rng = random.Random()

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            edge = rng.choice(edges)
            reply = await client.post(f"{edge}/v1/chat/completions", json=chat_body(max_tokens=1), headers=auth(secret))
            statuses.append(reply.status_code)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


async def test_random_load_never_admits_more_than_the_limit(stack: Stack, fleet: Fleet) -> None:
    rng = random.Random()
    # A burst that drips back one unit a minute: the limit is what the whole test may admit.
    limit = rng.randint(300, 600)
    secret, key_id = create_key_record(stack, fleet.edges, requests_per_minute=1, burst=limit)
    statuses = await load(fleet.edges, secret, LOAD_SECONDS, concurrency=rng.randint(8, 16))
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429}, set(statuses)
    assert len(statuses) > limit, "the load must exceed the limit"
    assert ok <= limit + 1, (ok, limit)
    # Leases idle for a lifetime go back, and later requests get them: well under one grant
    # per edge is lost once the load has gone on past a lease lifetime.
    assert ok >= limit - EDGES, (ok, limit)
    assert stack.wait_for_events(ok, key_id=key_id) == ok


async def test_a_lowered_limit_and_a_revoked_key_take_effect_within_a_lease_lifetime(
    stack: Stack, fleet: Fleet
) -> None:
    secret, key_id = create_key_record(stack, fleet.edges, requests_per_minute=100000)
    statuses = await load(fleet.edges, secret, 1.0, concurrency=6)
    assert statuses and set(statuses) == {200}
    async with httpx.AsyncClient(headers=stack.admin_headers(), timeout=10) as admin:
        lowered = await admin.patch(f"{stack.base_url}/keys/{key_id}", json={"requests_per_minute": 1, "burst": 5})
    assert lowered.status_code == 200, lowered.text
    changed = time.monotonic()
    # Within a lease lifetime plus the catalog watch, the new limit holds on every edge.
    await asyncio.sleep(1.5)
    statuses = await load(fleet.edges, secret, 1.0, concurrency=6)
    assert statuses.count(200) <= 5 + 1, statuses
    async with httpx.AsyncClient(headers=stack.admin_headers(), timeout=10) as admin:
        revoked = await admin.delete(f"{stack.base_url}/keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    await asyncio.sleep(1.5)
    statuses = await load(fleet.edges, secret, 0.5, concurrency=4)
    assert set(statuses) == {401}, statuses
    assert time.monotonic() - changed < 10
