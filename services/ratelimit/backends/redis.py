"""Counters shared by every replica through Redis.

Each scope is decided by one Lua script (acquire.lua) over keys that share the
scope's hash tag, `<prefix>:{key:k_1}:r`, so a scope is atomic on a single
Redis and on Redis Cluster alike. A check spanning several scopes sends one
script per scope in a single pipelined round trip; if any scope refuses, the
scopes that took are released again. That can make a concurrent request see
one unit less for a moment, never more: the limits are never exceeded.

Time comes from the caller (the replica's clock), as with the memory backend,
except for lease expiry: grants lapse on Redis' own clock (`TIME` in the
scripts), so replicas whose clocks drift still agree on when a grant is over.
Every script starts with common.lua: lapsing holds, reclaiming expired leases.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from itertools import groupby
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.ratelimit.quotas import (
    BackendUnavailableError,
    Decision,
    LeaseClaim,
    LeaseOutcome,
    LeaseResult,
    QuotaOutcome,
    Scope,
)

MAX_CONNECTIONS = 64


def _script(name: str) -> str:
    # Redis scripts cannot call each other: each carries the shared functions.
    folder = resources.files(__package__)
    return folder.joinpath("common.lua").read_text() + folder.joinpath(name).read_text()


class RedisBackend:
    name = "redis"

    def __init__(self, client: Any, prefix: str) -> None:
        # redis.asyncio.Redis or RedisCluster; both speak the same commands here.
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_script("acquire.lua"))
        self._settle = client.register_script(_script("settle.lua"))
        self._lease = client.register_script(_script("lease.lua"))

    @classmethod
    def from_url(cls, url: str, prefix: str, *, cluster: bool, timeout_seconds: float) -> RedisBackend:
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            # One immediate retry replaces a pooled connection Redis dropped on restart;
            # more would only stretch the wait when Redis is really gone.
            "retry": Retry(NoBackoff(), 1),
        }
        if cluster:
            return cls(RedisCluster.from_url(url, **options), prefix)
        # A bounded pool that waits for a free connection: a burst of checks
        # queues briefly instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_seconds * 4, **options
        )
        return cls(aioredis.Redis.from_pool(pool), prefix)

    def _scope_keys(self, scope: str) -> list[str]:
        """holds hash and zset, lease hash and zset, lent hash (see common.lua)."""
        base = f"{self._prefix}:{{{scope}}}"
        return [f"{base}:h", f"{base}:z", f"{base}:lh", f"{base}:lz", f"{base}:ls"]

    def _counter_key(self, scope: str, counter: str) -> str:
        return f"{self._prefix}:{{{scope}}}:{counter}"

    async def acquire(self, scopes: Sequence[Scope], reservation_id: str, now_us: int, hold_us: int) -> Decision:
        calls = []
        for scope in scopes:
            keys = self._scope_keys(scope.name)
            args: list[Any] = [now_us, reservation_id, hold_us]
            for quota in scope.quotas:
                keys.append(self._counter_key(scope.name, quota.counter))
                args += [quota.counter, int(quota.kind), quota.limit, quota.interval_us, quota.amount]
                args += [quota.floor, quota.period_end]
            calls.append((keys, args))
        replies = await self._run(self._acquire, calls)
        allowed = all(int(reply[0]) == 1 for reply in replies)
        outcomes: list[QuotaOutcome] = []
        for scope, reply in zip(scopes, replies, strict=True):
            for i, quota in enumerate(scope.quotas):
                fits, remaining, reset, retry = (int(v) for v in reply[1 + 4 * i : 5 + 4 * i])
                outcomes.append(QuotaOutcome(quota, fits == 1, remaining, reset, retry))
        if not allowed:
            taken = [scope for scope, reply in zip(scopes, replies, strict=True) if int(reply[0]) == 1]
            if taken:
                await self.release(taken, reservation_id, now_us)
        return Decision(allowed, tuple(outcomes))

    async def settle(
        self, scopes: Sequence[Scope], reservation_id: str, now_us: int, used_tokens: int, used_nano: int
    ) -> bool:
        return await self._finish(scopes, [now_us, reservation_id, "settle", used_tokens, used_nano])

    async def release(self, scopes: Sequence[Scope], reservation_id: str, now_us: int) -> bool:
        return await self._finish(scopes, [now_us, reservation_id, "release", 0, 0])

    async def _finish(self, scopes: Sequence[Scope], args: list[Any]) -> bool:
        calls = [(self._scope_keys(scope.name), args) for scope in scopes]
        replies = await self._run(self._settle, calls)
        return any(int(reply) == 1 for reply in replies)

    async def lease(self, claims: Sequence[LeaseClaim], holder: str, now_us: int, ttl_us: int) -> LeaseResult:
        # One script per scope (atomic there), all in one round trip; answers in claim order.
        order = sorted(range(len(claims)), key=lambda i: claims[i].scope)
        groups = [(scope, list(indexes)) for scope, indexes in groupby(order, key=lambda i: claims[i].scope)]
        calls = []
        for scope, indexes in groups:
            keys = self._scope_keys(scope)
            args: list[Any] = [now_us, ttl_us, holder]
            for i in indexes:
                claim, quota = claims[i], claims[i].quota
                keys.append(self._counter_key(scope, quota.counter))
                args += [quota.counter, int(quota.kind), quota.limit, quota.interval_us, quota.floor]
                args += [quota.period_end, claim.used, claim.want]
            calls.append((keys, args))
        replies = await self._run(self._lease, calls) if calls else []
        outcomes: list[LeaseOutcome] = [LeaseOutcome(0, 0, 0)] * len(claims)
        expiries = []
        for (_, indexes), reply in zip(groups, replies, strict=True):
            values = [int(v) for v in reply]
            expiries.append(values[0])
            for j, i in enumerate(indexes):
                granted, remaining, reset = values[1 + 3 * j : 4 + 3 * j]
                outcomes[i] = LeaseOutcome(granted, remaining, reset)
        # Each scope read Redis' clock once; the earliest bounds them all.
        return LeaseResult(tuple(outcomes), min(expiries, default=now_us + ttl_us))

    async def _run(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        try:
            if len(calls) == 1:
                keys, args = calls[0]
                return [await script(keys=keys, args=args)]
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise BackendUnavailableError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()
