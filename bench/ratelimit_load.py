"""The load side of the ratelimit benchmark: the request mix (the check the edge
sends for a chat request), the two targets it can drive (the service over gRPC,
or a backend in-process), and the workers that measure each call."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.ratelimit.policy import Floors, scopes_for
from services.ratelimit.quotas import MICRO, Backend, BackendUnavailableError, Scope
from services.ratelimit.settings import RateLimitSettings

ENDPOINT = "/v1/chat/completions"
# Every SPENT_EVERY-th key has a $0.0001 budget, less than any check reserves,
# so it is always refused (on key:budget): refusals are 5% of the mix whatever
# the throughput, and with Redis they include giving back the project and IP
# scopes that took. The other keys have room for everything they send.
SPENT_EVERY = 20
KEY_LIMITS = pb.Limits(requests_per_minute=6000, tokens_per_minute=6_000_000, budget_usd=1000.0)
SPENT_KEY_LIMITS = pb.Limits(requests_per_minute=6000, tokens_per_minute=6_000_000, budget_usd=0.0001)
PROJECT_LIMITS = pb.Limits(
    requests_per_minute=600_000, tokens_per_minute=600_000_000, budget_usd=1_000_000.0, budget_period="monthly"
)
RPC_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Options:
    mode: str
    backends: tuple[str, ...]
    seconds: float
    warmup: float
    concurrency: int
    keys: int
    channels: int
    settle_fraction: float
    redis_url: str
    seed: int


class Workload:
    """The requests: keys drawn uniformly, each with its project and client IP."""

    def __init__(self, keys: int) -> None:
        self.keys = keys
        projects = max(1, keys // 10)
        ips = max(1, keys // 4)
        self._key_ids = [f"k_bench_{i:05d}" for i in range(keys)]
        self._projects = [f"bench-project-{i % projects}" for i in range(keys)]
        self._ips = [f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}" for n in (i % ips for i in range(keys))]
        self._limits = [SPENT_KEY_LIMITS if i % SPENT_EVERY == SPENT_EVERY - 1 else KEY_LIMITS for i in range(keys)]

    def check(self, rng: random.Random, reservation_id: str) -> pb.CheckRequest:
        i = rng.randrange(self.keys)
        tokens = rng.randint(500, 1500)
        return pb.CheckRequest(
            key_id=self._key_ids[i],
            project=self._projects[i],
            client_ip=self._ips[i],
            endpoint=ENDPOINT,
            key_limits=self._limits[i],
            project_limits=PROJECT_LIMITS,
            reservation_id=reservation_id,
            reserve_tokens=tokens,
            reserve_usd=tokens / MICRO,
        )

    @staticmethod
    def settle(rng: random.Random, check: pb.CheckRequest) -> pb.SettleRequest:
        used = int(check.reserve_tokens * rng.uniform(0.2, 1.0))
        return pb.SettleRequest(check=check, used_tokens=used, used_usd=used / MICRO)


P = TypeVar("P")


class Target(Protocol[P]):
    """What the load is driven against. prepare is not timed; decide and settle are."""

    errors: tuple[type[Exception], ...]

    def prepare(self, check: pb.CheckRequest) -> P: ...

    async def decide(self, prepared: P) -> tuple[bool, bool]:
        """(allowed, degraded)."""
        ...

    async def settle(self, prepared: P, request: pb.SettleRequest) -> bool: ...


class GrpcTarget:
    errors: tuple[type[Exception], ...] = (grpc.aio.AioRpcError,)

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self._stubs = [ratelimit_pb2_grpc.RateLimitServiceStub(channel) for channel in channels]
        self._next = 0

    def prepare(self, check: pb.CheckRequest) -> tuple[ratelimit_pb2_grpc.RateLimitServiceAsyncStub, pb.CheckRequest]:
        self._next = (self._next + 1) % len(self._stubs)
        return self._stubs[self._next], check

    async def decide(
        self, prepared: tuple[ratelimit_pb2_grpc.RateLimitServiceAsyncStub, pb.CheckRequest]
    ) -> tuple[bool, bool]:
        stub, check = prepared
        reply = await stub.Check(check, timeout=RPC_TIMEOUT_SECONDS)
        return reply.allowed, reply.degraded

    async def settle(
        self, prepared: tuple[ratelimit_pb2_grpc.RateLimitServiceAsyncStub, pb.CheckRequest], request: pb.SettleRequest
    ) -> bool:
        stub, _ = prepared
        reply = await stub.Settle(request, timeout=RPC_TIMEOUT_SECONDS)
        return reply.settled


class BackendTarget:
    """The backend alone: the scopes the servicer would build, acquire and settle called directly."""

    errors: tuple[type[Exception], ...] = (BackendUnavailableError,)

    def __init__(self, backend: Backend, settings: RateLimitSettings) -> None:
        self._backend = backend
        self._rules = settings.rules
        self._floors = Floors()
        self._hold_us = settings.hold_seconds * MICRO

    def prepare(self, check: pb.CheckRequest) -> tuple[list[Scope], str]:
        return scopes_for(check, self._rules, self._floors, time.time()), check.reservation_id

    async def decide(self, prepared: tuple[list[Scope], str]) -> tuple[bool, bool]:
        scopes, reservation_id = prepared
        decision = await self._backend.acquire(scopes, reservation_id, _now_us(), self._hold_us)
        return decision.allowed, False

    async def settle(self, prepared: tuple[list[Scope], str], request: pb.SettleRequest) -> bool:
        scopes, reservation_id = prepared
        used_micro = max(math.ceil(request.used_usd * MICRO), 0)
        return await self._backend.settle(scopes, reservation_id, _now_us(), request.used_tokens, used_micro)


def _now_us() -> int:
    return int(time.time() * MICRO)


@dataclass
class Tally:
    """What the measured window saw (the warm-up is driven the same way, not counted)."""

    check_ns: list[int] = field(default_factory=list)
    settle_ns: list[int] = field(default_factory=list)
    allowed: int = 0
    refused: int = 0
    degraded: int = 0
    errors: int = 0
    settles_lapsed: int = 0
    settle_errors: int = 0
    first_error: str = ""

    def error(self, exc: Exception) -> None:
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"


# CPU seconds used so far, by whom: "machine" (every process), "service", "client", "redis".
Meter = Callable[[], Awaitable[dict[str, float]]]


@dataclass(frozen=True)
class Measured:
    tally: Tally
    elapsed: float
    cpu_percent: dict[str, float]


async def drive(target: Target[P], workload: Workload, options: Options, meter: Meter) -> Measured:
    """options.concurrency workers, each with one call in flight, for the
    warm-up and then the measured seconds."""
    tally = Tally()
    tag = uuid.uuid4().hex[:8]
    started = time.perf_counter_ns()
    measure_from = started + int(options.warmup * 1e9)
    end = measure_from + int(options.seconds * 1e9)

    async def worker(index: int) -> None:
        rng = random.Random(f"{options.seed}:{index}")
        n = 0
        while True:
            # The memory backend never suspends: without this one worker would run alone.
            await asyncio.sleep(0)
            if (begun := time.perf_counter_ns()) >= end:
                break
            n += 1
            measured = begun >= measure_from
            check = workload.check(rng, f"{tag}-{index}-{n}")
            prepared = target.prepare(check)
            t0 = time.perf_counter_ns()
            try:
                allowed, degraded = await target.decide(prepared)
            except target.errors as exc:
                if measured:
                    tally.errors += 1
                    tally.error(exc)
                continue
            if measured:
                tally.check_ns.append(time.perf_counter_ns() - t0)
                tally.allowed += allowed
                tally.refused += not allowed
                tally.degraded += degraded
            if not (allowed and rng.random() < options.settle_fraction):
                continue
            request = workload.settle(rng, check)
            t0 = time.perf_counter_ns()
            try:
                settled = await target.settle(prepared, request)
            except target.errors as exc:
                if measured:
                    tally.settle_errors += 1
                    tally.error(exc)
                continue
            if measured:
                tally.settle_ns.append(time.perf_counter_ns() - t0)
                tally.settles_lapsed += not settled

    async def cpu_window() -> dict[str, float]:
        await asyncio.sleep(max(measure_from - time.perf_counter_ns(), 0) / 1e9)
        before, t0 = await meter(), time.perf_counter_ns()
        await asyncio.sleep(max(end - time.perf_counter_ns(), 0) / 1e9)
        after, wall = await meter(), (time.perf_counter_ns() - t0) / 1e9
        used = {name: 100 * (after[name] - before[name]) / wall for name in after}
        # What the rest of the machine took meanwhile (other processes, the kernel).
        used["other"] = max(used.pop("machine") - sum(used.values()), 0.0)
        return {name: round(percent, 1) for name, percent in used.items()}

    window = asyncio.create_task(cpu_window())
    await asyncio.gather(*(worker(i) for i in range(options.concurrency)))
    elapsed = (time.perf_counter_ns() - measure_from) / 1e9
    return Measured(tally, elapsed, await window)
