"""One contract for both counter backends: the memory one, and Redis (the real
server on 127.0.0.1:6379, under a prefix of its own). Time is passed in, so
windows, bursts and lapsing holds are tested without sleeping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.backends.redis import RedisBackend
from services.ratelimit.quotas import MICRO, MINUTE_US, Backend, Kind, Quota, Scope

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000 * MICRO


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    redis_backend = RedisBackend.from_url(REDIS_URL, prefix, cluster=False, timeout_seconds=2.0)
    yield redis_backend
    await redis_backend.close()
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def requests(per_minute: int, capacity: int | None = None, counter: str = "r") -> Quota:
    cap = capacity or per_minute
    return Quota.rate("key:requests", Kind.REQUESTS, counter, per_minute=per_minute, capacity=cap, amount=1)


def tokens(per_minute: int, amount: int) -> Quota:
    return Quota.rate("key:tokens", Kind.TOKENS, "t", per_minute=per_minute, capacity=per_minute, amount=amount)


def budget(limit_micro: int, amount: int, floor: int = 0, period_end: int = 0) -> Quota:
    return Quota("key:budget", Kind.BUDGET, "b:total", limit_micro, amount=amount, floor=floor, period_end=period_end)


async def take(backend: Backend, *quotas: Quota, now: int = T0, scope: str = "key:k1", rid: str = "") -> bool:
    decision = await backend.acquire([Scope(scope, quotas)], rid or uuid.uuid4().hex, now, 60 * MICRO)
    return decision.allowed


async def test_a_burst_then_the_steady_rate(backend: Backend) -> None:
    quota = requests(60, capacity=5)  # one a second, five at once
    assert [await take(backend, quota) for _ in range(6)] == [True] * 5 + [False]
    assert not await take(backend, quota, now=T0 + MICRO // 2)
    assert await take(backend, quota, now=T0 + MICRO)
    assert not await take(backend, quota, now=T0 + MICRO)
    # A minute later the bucket is full again, not fuller.
    later = T0 + MINUTE_US
    assert [await take(backend, quota, now=later) for _ in range(6)] == [True] * 5 + [False]


async def test_outcome_reports_remaining_reset_and_retry(backend: Backend) -> None:
    quota = requests(60, capacity=2)
    first = await backend.acquire([Scope("key:k1", (quota,))], "a", T0, MICRO)
    assert (first.outcomes[0].remaining, first.outcomes[0].reset_us) == (1, MICRO)
    await backend.acquire([Scope("key:k1", (quota,))], "b", T0, MICRO)
    refused = await backend.acquire([Scope("key:k1", (quota,))], "c", T0, MICRO)
    outcome = refused.outcomes[0]
    assert not refused.allowed and not outcome.allowed
    assert (outcome.remaining, outcome.reset_us, outcome.retry_us) == (0, 2 * MICRO, MICRO)


async def test_all_or_nothing_across_quotas_and_scopes(backend: Backend) -> None:
    roomy, tight = requests(600), requests(60, capacity=1, counter="r:chat")
    assert await take(backend, roomy, tight)
    assert not await take(backend, roomy, tight)
    # The refused check took nothing from the roomy quota: 599 left, not 598.
    decision = await backend.acquire([Scope("key:k1", (roomy,))], "x", T0, MICRO)
    assert decision.outcomes[0].remaining == 598
    # Across scopes: the project refuses, so the key scope gives its request back.
    project = Scope("project:p", (requests(60, capacity=1),))
    key = Scope("key:k2", (requests(60, capacity=1),))
    assert (await backend.acquire([key, project], "y", T0, MICRO)).allowed
    other_key = Scope("key:k3", (requests(60, capacity=1),))
    assert not (await backend.acquire([other_key, project], "z", T0, MICRO)).allowed
    assert (await backend.acquire([other_key], "w", T0, MICRO)).allowed


async def test_tokens_reserve_then_settle_to_what_was_used(backend: Backend) -> None:
    quota = tokens(6000, amount=4000)
    scope = [Scope("key:k1", (quota,))]
    assert (await backend.acquire(scope, "r1", T0, 60 * MICRO)).allowed
    assert not (await backend.acquire(scope, "r2", T0, 60 * MICRO)).allowed
    # Used 1000 of the 4000 reserved: 3000 come back, so another 4000 fits.
    assert await backend.settle(scope, "r1", T0, 1000, 0)
    assert not await backend.settle(scope, "r1", T0, 1000, 0), "a second settle must change nothing"
    assert (await backend.acquire(scope, "r3", T0, 60 * MICRO)).allowed
    # Using more than reserved is owed: 5000 over makes the bucket go into debt.
    assert await backend.settle(scope, "r3", T0, 9000, 0)
    small = [Scope("key:k1", (tokens(6000, amount=1),))]
    assert not (await backend.acquire(small, "r4", T0, MICRO)).allowed
    # 10000 used of 6000 a minute: one fits again after 4001 tokens dripped back.
    assert not (await backend.acquire(small, "r5", T0 + 40 * MICRO, MICRO)).allowed
    assert (await backend.acquire(small, "r6", T0 + 41 * MICRO, MICRO)).allowed


async def test_release_gives_everything_back(backend: Backend) -> None:
    quotas = (requests(60, capacity=1), tokens(1000, amount=1000), budget(5_000_000, amount=5_000_000))
    scope = [Scope("key:k1", quotas)]
    assert (await backend.acquire(scope, "r1", T0, MICRO)).allowed
    assert not (await backend.acquire(scope, "r2", T0, MICRO)).allowed
    assert await backend.release(scope, "r1", T0)
    assert (await backend.acquire(scope, "r3", T0, MICRO)).allowed


async def test_budget_holds_settle_and_lapse(backend: Backend) -> None:
    cap = 1_000_000
    scope = [Scope("key:k1", (budget(cap, amount=600_000),))]
    assert (await backend.acquire(scope, "r1", T0, 10 * MICRO)).allowed
    refused = await backend.acquire(scope, "r2", T0, 10 * MICRO)
    assert not refused.allowed and refused.outcomes[0].remaining == 400_000
    assert await backend.settle(scope, "r1", T0, 0, 250_000)
    assert (await backend.acquire(scope, "r3", T0, 10 * MICRO)).allowed  # 250k spent + 600k held
    # r3 is never settled: after its hold lapses its 600k is free again.
    assert not (await backend.acquire(scope, "r4", T0 + 5 * MICRO, 10 * MICRO)).allowed
    assert (await backend.acquire(scope, "r5", T0 + 11 * MICRO, 10 * MICRO)).allowed
    assert not await backend.settle(scope, "r3", T0 + 12 * MICRO, 0, 600_000)


async def test_budget_never_reads_below_the_ledger_floor(backend: Backend) -> None:
    cap = 1_000_000
    # The counter is new (a restart, a flushed Redis) but the ledger says 900k were spent.
    scope = [Scope("key:k1", (budget(cap, amount=200_000, floor=900_000),))]
    decision = await backend.acquire(scope, "r1", T0, MICRO)
    assert not decision.allowed and decision.outcomes[0].remaining == 100_000
    fits = [Scope("key:k1", (budget(cap, amount=100_000, floor=900_000),))]
    assert (await backend.acquire(fits, "r2", T0, MICRO)).allowed


async def test_budget_reports_its_period_end(backend: Backend) -> None:
    end = T0 // MICRO + 3600
    scope = [Scope("key:k1", (budget(10, amount=20, period_end=end),))]
    outcome = (await backend.acquire(scope, "r1", T0, MICRO)).outcomes[0]
    assert not outcome.allowed and outcome.retry_us == 3600 * MICRO


async def test_concurrent_acquires_never_exceed_the_limit(backend: Backend) -> None:
    quota = tokens(60_000, amount=700)
    scope = [Scope("key:k1", (quota,))]
    results = await asyncio.gather(*(backend.acquire(scope, f"r{i}", T0, MICRO) for i in range(200)))
    assert sum(d.allowed for d in results) == 60_000 // 700


async def test_scopes_are_independent(backend: Backend) -> None:
    quota = requests(60, capacity=1)
    assert await take(backend, quota, scope="key:a")
    assert await take(backend, quota, scope="key:b")
    assert not await take(backend, quota, scope="key:a")
