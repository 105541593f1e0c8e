"""The edge's lease book against a real ratelimit service, in this process over
gRPC on port 0 (memory and Redis backends): local admission once a lease arrives,
per-request checks for a bucket too small to split, refunds, give-back when idle,
and per-request fallback when the service goes away."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import redis

from gateway.estimate import Estimate
from gateway.quota import Admission, QuotaClient
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from interlock.router.v1 import router_pb2 as pb
from services.common.catalog_cache import CatalogCache
from services.common.clock import SystemClock
from services.common.grpc_server import GrpcService
from services.ratelimit.server import build_server
from services.ratelimit.settings import RateLimitSettings

REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT_SECONDS = 10.0


@dataclass
class Service:
    server: GrpcService
    addr: str
    channel: grpc.aio.Channel
    stub: ratelimit_pb2_grpc.RateLimitServiceAsyncStub

    async def checks(self) -> int:
        stats: rpb.GetStatsResponse = await self.stub.GetStats(rpb.GetStatsRequest(), timeout=5)
        return stats.checks


@pytest.fixture(params=["memory", "redis"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    env = {"INTERLOCK_RATELIMIT_LISTEN": "127.0.0.1:0"}
    prefix = f"lease-test-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        env |= {"INTERLOCK_RATELIMIT_REDIS_URL": REDIS_URL, "INTERLOCK_RATELIMIT_REDIS_PREFIX": prefix}
    server = await build_server(RateLimitSettings.from_env(env))
    await server.start()
    addr = f"127.0.0.1:{server.port}"
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield Service(server, addr, channel, ratelimit_pb2_grpc.RateLimitServiceStub(channel))
    finally:
        await channel.close(grace=None)
        await server.stop(0)
        if request.param == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
            client.close()


@dataclass
class Edge:
    quotas: QuotaClient
    channel: grpc.aio.Channel

    async def admit(self, key: cpb.ApiKey, estimate: Estimate | None = None) -> Admission:
        caller = pb.CallerContext(
            request_id=uuid.uuid4().hex,
            key_id=key.id,
            project="",
            client_ip="10.0.0.1",
            endpoint="/v1/chat/completions",
        )
        return await self.quotas.check(caller, key, (lambda: estimate) if estimate is not None else None)


@pytest.fixture
async def edges(service: Service) -> AsyncIterator[Callable[..., Awaitable[Edge]]]:
    made: list[Edge] = []

    async def make(*, fail_open: bool = True) -> Edge:
        channel = grpc.aio.insecure_channel(service.addr)
        # A catalog cache that is never started: these tests hand it the key records themselves.
        cache = CatalogCache(channel, watch_keys=False)
        stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        edge = Edge(QuotaClient(stub, cache, SystemClock(), fail_open=fail_open, hold_seconds=30), channel)
        made.append(edge)
        return edge

    yield make
    for edge in made:
        await edge.quotas.drain()
        await edge.channel.close(grace=None)


def new_key(**limits: int | float) -> cpb.ApiKey:
    return cpb.ApiKey(id=f"k-{uuid.uuid4().hex[:8]}", **limits)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def until_local(edge: Edge, service: Service, key: cpb.ApiKey, estimate: Estimate | None = None) -> int:
    """Admit until one admission is made without a Check; returns how many were admitted."""
    admitted = 0

    async def local() -> bool:
        nonlocal admitted
        before = await service.checks()
        admission = await edge.admit(key, estimate)
        assert admission.refusal is None
        admitted += 1
        if await service.checks() == before:
            edge.quotas.settle(admission.reservation, None)
            admitted -= 1
            return True
        return False

    await wait_until(local, "a lease admits locally")
    return admitted


def header(admission: Admission, name: str) -> str:
    return dict(admission.headers)[name.encode()].decode()


async def test_requests_are_admitted_locally_once_a_lease_arrives(
    service: Service, edges: Callable[..., Awaitable[Edge]]
) -> None:
    edge = await edges()
    key = new_key(requests_per_minute=6000)
    await until_local(edge, service, key)
    before = await service.checks()
    admissions = [await edge.admit(key) for _ in range(20)]
    assert all(a.refusal is None for a in admissions)
    # A steady stream is admitted from leases: no Check for any of them.
    assert await service.checks() == before
    remaining = [int(header(a, "x-ratelimit-remaining")) for a in admissions]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]
    for admission in admissions:
        assert header(admission, "x-ratelimit-limit") == "6000"
        assert header(admission, "x-ratelimit-limit-requests") == "6000"
        assert header(admission, "x-ratelimit-reset-requests").endswith("s")


async def test_a_bucket_too_small_to_split_is_checked_per_request(
    service: Service, edges: Callable[..., Awaitable[Edge]]
) -> None:
    edge = await edges()
    key = new_key(requests_per_minute=7)
    outcomes = []
    for _ in range(12):
        outcomes.append((await edge.admit(key)).refusal is None)
        # Time for the shape to be resolved and a lease asked for: it must not be granted.
        await asyncio.sleep(0.05)
    assert outcomes == [True] * 7 + [False] * 5
    assert await service.checks() == 12


async def test_local_admissions_refund_unused_tokens_into_the_lease(
    service: Service, edges: Callable[..., Awaitable[Edge]]
) -> None:
    edge = await edges()
    key = new_key(requests_per_minute=100000, tokens_per_minute=600000)
    estimate = Estimate(prompt_tokens=10, completion_tokens=90, input_per_million=0, output_per_million=0)
    await until_local(edge, service, key, estimate)
    first = await edge.admit(key, estimate)
    left = int(header(first, "x-ratelimit-remaining-tokens"))
    # It used 30 of the 100 reserved: 70 go back into this process's lease.
    edge.quotas.settle(first.reservation, pb.Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30))
    second = await edge.admit(key, estimate)
    assert int(header(second, "x-ratelimit-remaining-tokens")) == left + 70 - 100


async def test_idle_leases_are_given_back(service: Service, edges: Callable[..., Awaitable[Edge]]) -> None:
    edge = await edges()
    # A burst of 1000 that drips back one a minute: counts stay put for the test.
    key = new_key(requests_per_minute=1, burst=1000)
    checked = await until_local(edge, service, key)
    for _ in range(5):
        assert (await edge.admit(key)).refusal is None
    probe = rpb.CheckRequest(
        key_id=key.id, endpoint="/v1/chat/completions", key_limits=rpb.Limits(requests_per_minute=1, burst=1000)
    )

    async def given_back() -> bool:
        decision: rpb.CheckResponse = await service.stub.Check(probe, timeout=5)
        probes.append(decision)
        return decision.remaining >= 1000 - checked - 5 - len(probes)

    probes: list[rpb.CheckResponse] = []
    await wait_until(given_back, "the idle lease went back to the bucket")
    # Exactly what was used stays used: the per-request ones, the 5 local ones and the probes.
    assert probes[-1].remaining == 1000 - checked - 5 - len(probes)


async def test_requests_are_checked_one_by_one_when_leasing_fails(
    service: Service, edges: Callable[..., Awaitable[Edge]]
) -> None:
    edge = await edges(fail_open=False)
    key = new_key(requests_per_minute=6000)
    await until_local(edge, service, key)
    await service.server.stop(0)

    async def refused() -> bool:
        admission = await edge.admit(key)
        return admission.refusal is not None and admission.refusal.http_status == 503

    # The leases run out within their lifetime; then every request asks, and fails closed.
    started = time.monotonic()
    await wait_until(refused, "a request is refused with the service gone")
    assert time.monotonic() - started < 3.0
    assert await refused()


async def test_two_edges_never_admit_more_than_the_limit(
    service: Service, edges: Callable[..., Awaitable[Edge]]
) -> None:
    first, second = await edges(), await edges()
    limit = 400
    key = new_key(requests_per_minute=1, burst=limit)

    async def hammer(edge: Edge) -> int:
        admitted = 0
        for _ in range(200):
            batch = await asyncio.gather(*(edge.admit(key) for _ in range(5)))
            admitted += sum(1 for a in batch if a.refusal is None)
        return admitted

    # Normally about a second; a stall fails here, with the service's counts, not at the suite's timeout.
    try:
        async with asyncio.timeout(60):
            admitted = await asyncio.gather(hammer(first), hammer(second))
    except TimeoutError:
        try:
            checks: int | str = await asyncio.wait_for(service.checks(), 5)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            checks = f"no stats ({exc!r})"
        pytest.fail(f"2,000 admissions took over 60 s; checks answered by the service: {checks}")
    assert sum(admitted) <= limit
    assert all(a > 0 for a in admitted), admitted
    # Giving back what is left loses nothing: the bucket holds exactly what was not admitted
    # (give or take the one unit that drips back a minute).
    await first.quotas.drain()
    await second.quotas.drain()
    limits = rpb.Limits(requests_per_minute=1, burst=limit)
    probe = rpb.CheckRequest(key_id=key.id, endpoint="/v1/chat/completions", key_limits=limits)
    decision: rpb.CheckResponse = await service.stub.Check(probe, timeout=5)
    assert limit - sum(admitted) - 1 <= decision.remaining <= limit - sum(admitted), (decision.remaining, admitted)
