"""The lease contract (services.ratelimit.leases) for both counter backends: the
memory one, and Redis (the real server, under a prefix of its own).

The caller's time is pinned (T0) for both. Lease expiry is the one thing Redis
times itself (`TIME`), so the Redis cases either give leases back or wait, on
Redis' own clock, until a short lease is over."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.backends.redis import RedisBackend
from services.ratelimit.quotas import (
    MICRO,
    Backend,
    Decision,
    Kind,
    LeaseClaim,
    LeaseOutcome,
    LeaseResult,
    Quota,
    Scope,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000 * MICRO
# Long enough that no lease lapses while a test runs, unless the test means it to.
LONG_TTL = 60 * MICRO
SHORT_TTL = MICRO // 10
SCOPE = "key:k1"


@dataclass
class Counters:
    backend: Backend
    redis: aioredis.Redis | None = None

    async def after_expiry(self, result: LeaseResult, now: int) -> int:
        """A caller time at which the grants of result are over. Memory: their expiry
        itself. Redis: the pinned time, once Redis' clock has passed their expiry."""
        if self.redis is None:
            return result.expires_us
        while True:
            seconds, micros = await self.redis.time()
            if seconds * MICRO + micros > result.expires_us:
                return now
            await asyncio.sleep(0.01)


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield Counters(MemoryBackend())
        return
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.from_url(REDIS_URL, prefix, cluster=False, timeout_seconds=2.0)
    client = aioredis.Redis.from_url(REDIS_URL)
    yield Counters(backend, client)
    await backend.close()
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def rate(capacity: int, interval_us: int = MICRO, kind: Kind = Kind.REQUESTS, counter: str = "r") -> Quota:
    return Quota("key:requests", kind, counter, capacity, interval_us)


def budget(limit: int, floor: int = 0) -> Quota:
    return Quota("key:budget", Kind.BUDGET, "b:total", limit, floor=floor)


async def claim(
    backend: Backend,
    holder: str,
    quota: Quota,
    *,
    used: int = 0,
    want: int = 0,
    now: int = T0,
    ttl: int = LONG_TTL,
) -> LeaseOutcome:
    result = await backend.lease([LeaseClaim(SCOPE, quota, used, want)], holder, now, ttl)
    return result.outcomes[0]


async def check(backend: Backend, quota: Quota, amount: int = 1, now: int = T0) -> Decision:
    taken = dataclasses.replace(quota, amount=amount)
    return await backend.acquire([Scope(SCOPE, (taken,))], uuid.uuid4().hex, now, LONG_TTL)


async def admitted(backend: Backend, quota: Quota, now: int = T0, limit: int = 1000) -> int:
    """How many single requests a per-request check admits now."""
    for n in range(limit):
        if not (await check(backend, quota, now=now)).allowed:
            return n
    return limit


async def test_a_grant_takes_from_availability_and_others_see_the_rest(counters: Counters) -> None:
    backend, quota = counters.backend, rate(100)
    first = await claim(backend, "a", quota, want=40)
    assert (first.granted, first.remaining) == (40, 60)
    # Full again only once the grant is back and drained: 40 units at a second each.
    assert first.reset_us == 40 * MICRO
    decision = await check(backend, quota)
    assert decision.allowed and decision.outcomes[0].remaining == 59
    # Another holder shares what is left with the one already holding: 59 // 2.
    second = await claim(backend, "b", quota, want=100)
    assert (second.granted, second.remaining) == (29, 30)


async def test_a_per_request_check_cannot_exceed_capacity_less_the_grants(counters: Counters) -> None:
    backend, quota = counters.backend, rate(40)
    assert (await claim(backend, "a", quota, want=30)).granted == 30
    assert await admitted(backend, quota) == 10
    refused = await check(backend, quota)
    assert not refused.allowed and refused.outcomes[0].retry_us == MICRO
    # Given back unused, the grant's units are there for everyone.
    back = await claim(backend, "a", quota, used=0, want=0)
    assert (back.granted, back.remaining) == (0, 30)
    assert await admitted(backend, quota) == 30


async def test_renewal_charges_what_was_used_and_returns_the_rest(counters: Counters) -> None:
    backend, quota = counters.backend, rate(100)
    assert (await claim(backend, "a", quota, want=50)).granted == 50
    renewed = await claim(backend, "a", quota, used=20, want=10)
    # 20 used, 30 back; 10 granted anew: 100 - 20 - 10 left.
    assert (renewed.granted, renewed.remaining) == (10, 70)
    # The used units drip back from the report on, a unit a second.
    later = await claim(backend, "a", quota, used=0, want=0, now=T0 + 5 * MICRO)
    assert later.remaining == 85


async def test_a_negative_report_refunds(counters: Counters) -> None:
    backend, quota = counters.backend, rate(100_000, interval_us=600, kind=Kind.TOKENS, counter="t")
    assert (await claim(backend, "a", quota, want=5_000)).granted == 5_000
    assert (await claim(backend, "a", quota, used=5_000, want=1_000)).remaining == 94_000
    # A request settled below its reservation: 2,000 tokens come back.
    refunded = await claim(backend, "a", quota, used=-2_000, want=0)
    assert refunded.remaining == 97_000


async def test_an_expired_lease_counts_as_fully_used_at_its_expiry(counters: Counters) -> None:
    backend, quota = counters.backend, rate(100)
    result = await backend.lease([LeaseClaim(SCOPE, quota, 0, 50)], "a", T0, SHORT_TTL)
    assert result.outcomes[0].granted == 50
    now = await counters.after_expiry(result, T0)
    # All 50 charged, at the expiry: nothing of them has dripped back yet.
    assert await admitted(backend, quota, now=now) == 50
    # A late report of the expired lease is not charged twice.
    late = await claim(backend, "a", quota, used=30, want=0, now=now + 10 * MICRO)
    assert (late.granted, late.remaining) == (0, 10)


async def test_the_grant_formula_with_several_holders(counters: Counters) -> None:
    backend, quota = counters.backend, rate(90)
    grants = [
        (await claim(backend, holder, quota, want=want)).granted
        for holder, want in zip("abcd", (30, 99, 99, 99), strict=True)
    ]
    # a alone: its want; b: 60 // 2; c: 30 // 3; d: 20 // 4.
    assert grants == [30, 30, 10, 5]
    # a renews: its own 30 come back first, then 45 left among 4 holders.
    assert (await claim(backend, "a", quota, used=0, want=99)).granted == 11
    # Less than one unit per holder: nothing, ask per request.
    tiny = rate(40, counter="r:chat")
    assert [(await claim(backend, h, tiny, want=99)).granted for h in "abc"] == [40, 0, 0]
    assert (await claim(backend, "a", tiny, used=38, want=1)).granted == 1


async def test_a_holder_that_gives_back_is_no_longer_counted(counters: Counters) -> None:
    backend, quota = counters.backend, rate(90)
    assert (await claim(backend, "a", quota, want=30)).granted == 30
    assert (await claim(backend, "a", quota, used=0, want=0)).granted == 0
    # b is alone again: no share kept for a.
    assert (await claim(backend, "b", quota, want=99)).granted == 90


async def test_budgets_lease_above_the_ledger_floor(counters: Counters) -> None:
    backend, quota = counters.backend, budget(10_000, floor=3_000)
    granted = await claim(backend, "a", quota, want=50_000)
    assert (granted.granted, granted.remaining) == (7_000, 0)
    assert not (await check(backend, quota, amount=1)).allowed
    renewed = await claim(backend, "a", quota, used=2_000, want=0)
    assert renewed.remaining == 5_000
    assert not (await check(backend, quota, amount=5_001)).allowed
    assert (await check(backend, quota, amount=5_000)).allowed
    # A refund never takes spend below what the ledger says was spent: 3,000 spent,
    # 5,000 held by the check.
    refunded = await claim(backend, "a", quota, used=-90_000, want=0)
    assert refunded.remaining == 2_000


async def test_an_expired_budget_lease_is_spent_in_full(counters: Counters) -> None:
    backend, quota = counters.backend, budget(10_000)
    result = await backend.lease([LeaseClaim(SCOPE, quota, 0, 4_000)], "a", T0, SHORT_TTL)
    assert result.outcomes[0].granted == 4_000
    now = await counters.after_expiry(result, T0)
    assert not (await check(backend, quota, amount=6_001, now=now)).allowed
    assert (await check(backend, quota, amount=6_000, now=now)).allowed


async def test_many_buckets_of_many_scopes_in_one_call(counters: Counters) -> None:
    backend = counters.backend
    claims = [
        LeaseClaim("key:k1", rate(100), 0, 10),
        LeaseClaim("project:p", rate(50), 0, 100),
        LeaseClaim("key:k1", budget(1_000), 0, 100),
        LeaseClaim("ip:10.0.0.1", rate(64, counter="r:chat"), 0, 0),
    ]
    result = await backend.lease(claims, "a", T0, LONG_TTL)
    assert [(o.granted, o.remaining) for o in result.outcomes] == [(10, 90), (50, 0), (100, 900), (0, 64)]


@pytest.mark.parametrize("seed", range(6))
async def test_random_leases_and_checks_never_admit_more_than_gcra(counters: Counters, seed: int) -> None:
    """Holders spend from their leases at random moments, report random use, renew
    with random wants or give back, while per-request checks come in between. Every
    window of the admissions stays within capacity + elapsed / interval. Memory:
    leases also lapse on the pinned clock; Redis: they live (a minute) until given back."""
    rng = random.Random(seed)
    backend = counters.backend
    expiring = counters.redis is None
    capacity, interval = rng.randint(32, 120), rng.randint(1_000, 20_000)
    quota = rate(capacity, interval, counter=f"r{seed}")
    ttl = rng.randint(2, 20) * interval if expiring else LONG_TTL
    holders = [f"h{i}" for i in range(rng.randint(1, 4))]
    # holder -> [granted, used since the report, expires]
    leases: dict[str, list[int]] = {}
    times: list[int] = []
    now = T0
    for _ in range(400):
        now += rng.choice((0, 0, rng.randint(0, interval), rng.randint(0, 5 * interval)))
        for holder, (granted, used, expires) in list(leases.items()):
            if expiring and now >= expires:
                del leases[holder]  # lapsed: the service counts it as fully used
            elif granted > used and rng.random() < 0.6:
                spend = rng.randint(1, granted - used)
                leases[holder][1] += spend
                times += [now] * spend
        action = rng.random()
        if action < 0.4:
            if (await check(backend, quota, now=now)).allowed:
                times.append(now)
        elif action < 0.9:
            holder = rng.choice(holders)
            used = leases.pop(holder, [0, 0, 0])[1]
            want = rng.choice((0, rng.randint(1, capacity)))
            outcome = await claim(backend, holder, quota, used=used, want=want, now=now, ttl=ttl)
            if outcome.granted:
                leases[holder] = [outcome.granted, 0, now + ttl]
    for holder, (_, used, _) in leases.items():
        await claim(backend, holder, quota, used=used, want=0, now=now)
    assert times, "the run admitted nothing"
    # Any window [t_i, t_j]: (j - i + 1) admissions <= capacity + (t_j - t_i) / interval,
    # i.e. (j * interval - t_j) - min over i <= j of (i * interval - t_i) + interval <= capacity * interval.
    lowest = None
    for j, t in enumerate(sorted(times)):
        g = j * interval - t
        lowest = g if lowest is None else min(lowest, g)
        assert g - lowest + interval <= capacity * interval, f"window ending at admission {j} over-admits"
