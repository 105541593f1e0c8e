"""RateLimitService.Lease over real gRPC: shapes resolved into buckets, grants the
per-request paths (the edge's Check and Envoy's ShouldRateLimit) make room for,
buckets too small to split, budget floors from the service's own ledger copy,
and a backend that fails. Memory and Redis backends; the service's clock is pinned."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as aioredis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.common.clock import ManualClock
from services.common.grpc_server import Registration, create_server
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.backends.redis import RedisBackend
from services.ratelimit.envoy import EnvoyRateLimitServicer
from services.ratelimit.limiter import Limiter
from services.ratelimit.policy import Floors, Rules, budget_period
from services.ratelimit.quotas import NANO, Backend
from services.ratelimit.server import ENVOY_SERVICE_NAME, SERVICE_NAME, build_server
from services.ratelimit.servicer import RateLimitServicer
from services.ratelimit.settings import RateLimitSettings

REDIS_URL = "redis://127.0.0.1:6379/0"
# 2027-01-15: the budget period is January 2027.
NOW = 1_800_000_000.0
# Roomy class limits, so the key's and IP's own request limits are what the tests hit.
RULES = Rules(endpoint_rpm={"chat": 400, "default": 5}, ip_rpm=320)
Kind = pb.QuotaKind


@dataclass
class Service:
    stub: ratelimit_pb2_grpc.RateLimitServiceAsyncStub
    envoy: rls_pb2_grpc.RateLimitServiceAsyncStub
    floors: Floors
    clock: ManualClock


@asynccontextmanager
async def serving(backend: Backend, *, lease_ms: int = 1000) -> AsyncIterator[Service]:
    clock, floors = ManualClock(NOW), Floors()
    limiter = Limiter(backend, clock, fail_open=True, hold_seconds=60)
    servicer = RateLimitServicer(limiter, RULES, floors, clock, lease_ms=lease_ms)
    server = create_server(
        "127.0.0.1:0",
        [
            Registration(ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server, servicer, SERVICE_NAME),
            Registration(
                rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
                EnvoyRateLimitServicer(limiter, RULES),
                ENVOY_SERVICE_NAME,
            ),
        ],
    )
    server.cleanups.append(backend.close)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Service(
                ratelimit_pb2_grpc.RateLimitServiceStub(channel),
                rls_pb2_grpc.RateLimitServiceStub(channel),
                floors,
                clock,
            )
    finally:
        await server.stop(None)


@pytest.fixture(params=["memory", "redis"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    if request.param == "memory":
        async with serving(MemoryBackend()) as running:
            yield running
        return
    prefix = f"test-lease-{uuid.uuid4().hex[:8]}"
    async with serving(RedisBackend.from_url(REDIS_URL, prefix, cluster=False, timeout_seconds=2.0)) as running:
        yield running
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def chat(key: str = "k1", **limits: float | str) -> pb.CheckRequest:
    return pb.CheckRequest(
        key_id=key,
        project="p1",
        client_ip="10.0.0.1",
        endpoint="/v1/chat/completions",
        key_limits=pb.Limits(**limits),  # type: ignore[arg-type]
        project_limits=pb.Limits(requests_per_minute=600),
    )


async def shape(service: Service, request: pb.CheckRequest) -> list[pb.Bucket]:
    response = await service.stub.Lease(pb.LeaseRequest(shapes=[request]), timeout=5)
    return list(response.shapes[0].buckets)


async def lease(service: Service, *claims: pb.LeaseClaim, holder: str = "edge-1") -> pb.LeaseResponse:
    response: pb.LeaseResponse = await service.stub.Lease(pb.LeaseRequest(holder=holder, claims=claims), timeout=5)
    return response


async def test_a_shape_resolves_into_every_bucket_in_check_order(service: Service) -> None:
    buckets = await shape(
        service, chat(requests_per_minute=120, tokens_per_minute=60_000, budget_usd=5.0, budget_period="monthly")
    )
    assert [(b.scope, b.counter, b.kind, b.name) for b in buckets] == [
        ("key:k1", "r", Kind.QUOTA_KIND_REQUESTS, "key:requests"),
        ("key:k1", "t", Kind.QUOTA_KIND_TOKENS, "key:tokens"),
        ("key:k1", "b:2027-01", Kind.QUOTA_KIND_BUDGET, "key:budget"),
        ("key:k1", "r:chat", Kind.QUOTA_KIND_REQUESTS, "key:chat:requests"),
        ("project:p1", "r", Kind.QUOTA_KIND_REQUESTS, "project:requests"),
        ("ip:10.0.0.1", "r", Kind.QUOTA_KIND_REQUESTS, "ip:requests"),
        ("ip:10.0.0.1", "r:chat", Kind.QUOTA_KIND_REQUESTS, "ip:chat:requests"),
    ]
    assert [(b.limit, b.interval_us) for b in buckets[:2]] == [(120, 500_000), (60_000, 1_000)]
    assert (buckets[2].limit, buckets[2].period_end) == (5 * NANO, budget_period("monthly", NOW).end)


async def test_a_grant_is_held_back_from_the_edges_check(service: Service) -> None:
    request = chat(requests_per_minute=300)
    key_requests = (await shape(service, request))[0]
    response = await lease(service, pb.LeaseClaim(bucket=key_requests, want=260))
    assert (response.ttl_ms, response.degraded) == (1000, False)
    granted = response.leases[0]
    assert (granted.granted, granted.leasable) == (260, True)
    assert (granted.state.name, granted.state.remaining, granted.state.allowed) == ("key:requests", 40, True)
    admitted = [(await service.stub.Check(request, timeout=5)).allowed for _ in range(41)]
    assert admitted == [True] * 40 + [False]
    # Given back with 10 used: 250 units return, 10 are charged.
    back = await lease(service, pb.LeaseClaim(bucket=key_requests, used=10, want=0))
    assert (back.leases[0].granted, back.leases[0].state.remaining, back.leases[0].state.allowed) == (0, 250, True)


async def test_envoy_sees_the_room_leases_took_from_an_ip(service: Service) -> None:
    ip_requests = (await shape(service, chat()))[-2]
    assert ip_requests.name == "ip:requests"
    assert (await lease(service, pb.LeaseClaim(bucket=ip_requests, want=316))).leases[0].granted == 316
    descriptor = common_pb2.RateLimitDescriptor(
        entries=[common_pb2.RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.1")]
    )
    request = rls_pb2.RateLimitRequest(domain="interlock", descriptors=[descriptor])
    codes = [(await service.envoy.ShouldRateLimit(request, timeout=5)).overall_code for _ in range(5)]
    ok, over = rls_pb2.RateLimitResponse.Code.OK, rls_pb2.RateLimitResponse.Code.OVER_LIMIT
    assert codes == [ok] * 4 + [over]


async def test_a_bucket_too_small_to_split_is_never_leased(service: Service) -> None:
    request = chat(key="k7", requests_per_minute=7)
    key_requests = (await shape(service, request))[0]
    response = await lease(service, pb.LeaseClaim(bucket=key_requests, want=5))
    small = response.leases[0]
    assert (small.granted, small.leasable, small.state.allowed, small.state.remaining) == (0, False, False, 7)
    # Exactly as before leases: 7 admitted per request, then refused.
    admitted = [(await service.stub.Check(request, timeout=5)).allowed for _ in range(8)]
    assert admitted == [True] * 7 + [False]


async def test_a_budget_lease_starts_from_the_ledger_floor(service: Service) -> None:
    period = budget_period("monthly", NOW)
    service.floors.period_start = period.start
    service.floors.keys = {"k1": (0, 3 * NANO)}  # $3 of $5 already spent this month
    budget = (await shape(service, chat(budget_usd=5.0, budget_period="monthly")))[0]
    assert budget.kind == Kind.QUOTA_KIND_BUDGET
    # A floor the holder might send is not part of the bucket: the service uses its own.
    response = await lease(service, pb.LeaseClaim(bucket=budget, want=10 * NANO))
    assert (response.leases[0].granted, response.leases[0].leasable) == (2 * NANO, True)
    assert response.leases[0].state.reset_at == period.end
    spend = chat(budget_usd=5.0, budget_period="monthly")
    spend.reserve_usd = 0.01
    refused = await service.stub.Check(spend, timeout=5)
    assert (refused.allowed, refused.quota) == (False, "key:budget")


async def test_a_changed_bucket_from_a_holder_is_not_leased(service: Service) -> None:
    key_requests = (await shape(service, chat(requests_per_minute=100)))[0]
    forged = pb.Bucket()
    forged.CopyFrom(key_requests)
    forged.counter = "b:not-a-month"
    forged.kind = Kind.QUOTA_KIND_BUDGET
    response = await lease(service, pb.LeaseClaim(bucket=forged, want=10))
    assert (response.leases[0].granted, response.leases[0].leasable) == (0, False)


async def test_a_claim_needs_a_holder(service: Service) -> None:
    key_requests = (await shape(service, chat(requests_per_minute=100)))[0]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await lease(service, pb.LeaseClaim(bucket=key_requests, want=1), holder="")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unreachable_backend_grants_nothing_and_says_so() -> None:
    closed = RedisBackend.from_url("redis://127.0.0.1:1/0", "x", cluster=False, timeout_seconds=0.2)
    async with serving(closed) as service:
        key_requests = (await shape(service, chat(requests_per_minute=100)))[0]
        response = await lease(service, pb.LeaseClaim(bucket=key_requests, want=10))
        assert response.degraded
        assert (response.leases[0].granted, response.leases[0].state.allowed) == (0, False)
        stats = await service.stub.GetStats(pb.GetStatsRequest(), timeout=5)
        assert stats.backend_errors == 1


async def test_the_lease_lifetime_is_a_setting() -> None:
    settings = RateLimitSettings.from_env(
        {"INTERLOCK_RATELIMIT_LISTEN": "127.0.0.1:0", "INTERLOCK_RATELIMIT_LEASE_MS": "250"}
    )
    server = await build_server(settings, ManualClock(NOW))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: ratelimit_pb2_grpc.RateLimitServiceAsyncStub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
            response = await stub.Lease(pb.LeaseRequest(holder="edge-1"), timeout=5)
    finally:
        await server.stop(None)
    assert response.ttl_ms == 250
