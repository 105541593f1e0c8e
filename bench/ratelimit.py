"""The ratelimit decision benchmark: how many Check decisions a second the
ratelimit service makes with each counter backend, and how long each takes.

    python -m bench.ratelimit [--mode grpc|backend] [--backend memory|redis|both]
                              [--seconds 10] [--warmup 2] [--concurrency 32] [--keys 1000]
                              [--redis-url redis://127.0.0.1:6379/0] [--json PATH]

grpc mode (the default) starts the real service (`python -m services.ratelimit`)
as a subprocess per backend and drives RateLimitService.Check over gRPC from
this process, so the service and the load generator each have a core. backend
mode calls MemoryBackend/RedisBackend.acquire in-process (a child process per
backend, so each has its own peak RSS) with the scopes policy.scopes_for builds
for the same requests: the backend's cost without gRPC.

Every check is the one the edge sends for a chat request: a key, its project
and the client IP (three scopes, nine quotas with the rules set below), a
unique reservation id, ~1000 tokens and ~0.001 USD reserved. About half the
admitted checks are then settled. Decisions count Check calls only; the
settles run in the same workers, between checks, and are reported apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc

from bench.harness import (
    Latency,
    ServiceProcess,
    cpu_seconds,
    delete_redis_prefix,
    free_port,
    grpc_serving,
    machine_busy_seconds,
    markdown_table,
    peak_rss_kib,
    redis_cpu_seconds,
    redis_reachable,
)
from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.ratelimit.policy import Floors, scopes_for
from services.ratelimit.quotas import MICRO, Backend, BackendUnavailableError, Scope
from services.ratelimit.server import build_backend
from services.ratelimit.settings import RateLimitSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RateLimitService"].full_name

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ENDPOINT = "/v1/chat/completions"
# The service's own rules for the run: an overall and a chat rule per client IP
# (the chat rule applies per key too), high enough never to bind here.
RULES_ENV = {
    "INTERLOCK_RATELIMIT_IP_RPM": "100000",
    "INTERLOCK_RATELIMIT_ENDPOINT_RPM": "chat=100000,default=100000",
}
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
STARTUP_SECONDS = 30.0
# Above this much CPU used by the rest of the machine during a run, say its figures are disturbed.
BUSY_OTHER_CPU_PERCENT = 25.0

HEADERS = (
    "backend",
    "decisions/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "allowed",
    "refused",
    "settles/s",
    "settle p50 ms",
    "settle p99 ms",
    "peak RSS MiB",
    "service CPU %",
    "client CPU %",
    "redis CPU %",
    "other CPU %",
)


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


@dataclass
class Result:
    backend: str
    mode: str
    seconds: float
    decisions: int
    decisions_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    allowed: int
    refused: int
    # Admitted without the backend (it failed; the service fails open): included in allowed.
    degraded: int
    # Checks that got no decision (RPC or backend error): not in decisions.
    errors: int
    settles: int
    settles_per_second: float
    settle_p50_ms: float
    settle_p99_ms: float
    settle_max_ms: float
    # Settles answered settled=false (the reservation was gone).
    settles_lapsed: int
    settle_errors: int
    # Of the process deciding: the service (grpc mode) or the benchmark's child (backend mode).
    peak_rss_kib: int
    service_cpu_percent: float
    client_cpu_percent: float | None
    redis_cpu_percent: float | None
    # The rest of the machine (other processes) meanwhile: a high figure means the numbers are disturbed.
    other_cpu_percent: float
    first_error: str = ""
    # grpc mode: the service's GetStats after the run (warm-up included).
    service_stats: dict[str, Any] = field(default_factory=dict)
    redis_keys_deleted: int | None = None

    @staticmethod
    def of(backend: str, mode: str, measured: Measured, peak_rss: int) -> Result:
        t = measured.tally
        checks, settles = Latency.of_ns(t.check_ns), Latency.of_ns(t.settle_ns)
        cpu = measured.cpu_percent
        return Result(
            backend=backend,
            mode=mode,
            seconds=round(measured.elapsed, 3),
            decisions=checks.count,
            decisions_per_second=round(checks.count / measured.elapsed, 1),
            p50_ms=round(checks.p50_ms, 4),
            p99_ms=round(checks.p99_ms, 4),
            max_ms=round(checks.max_ms, 4),
            allowed=t.allowed,
            refused=t.refused,
            degraded=t.degraded,
            errors=t.errors,
            settles=settles.count,
            settles_per_second=round(settles.count / measured.elapsed, 1),
            settle_p50_ms=round(settles.p50_ms, 4),
            settle_p99_ms=round(settles.p99_ms, 4),
            settle_max_ms=round(settles.max_ms, 4),
            settles_lapsed=t.settles_lapsed,
            settle_errors=t.settle_errors,
            peak_rss_kib=peak_rss,
            service_cpu_percent=cpu["service"],
            client_cpu_percent=cpu.get("client"),
            redis_cpu_percent=cpu.get("redis"),
            other_cpu_percent=cpu["other"],
            first_error=t.first_error,
        )

    def row(self) -> list[object]:
        return [
            self.backend if self.mode == "grpc" else f"{self.backend} (backend only)",
            self.decisions_per_second,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.allowed,
            self.refused,
            self.settles_per_second,
            self.settle_p50_ms,
            self.settle_p99_ms,
            round(self.peak_rss_kib / 1024, 1),
            self.service_cpu_percent,
            self.client_cpu_percent,
            self.redis_cpu_percent,
            self.other_cpu_percent,
        ]


def service_env(backend: str, listen: str, options: Options, prefix: str) -> dict[str, str]:
    """The service's environment: this one without any INTERLOCK_ setting, plus the run's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("INTERLOCK_")}
    env |= RULES_ENV | {
        "INTERLOCK_RATELIMIT_LISTEN": listen,
        "INTERLOCK_LOG_LEVEL": "warning",
        "INTERLOCK_GRACE_SECONDS": "1",
    }
    if backend == "redis":
        env |= {"INTERLOCK_RATELIMIT_REDIS_URL": options.redis_url, "INTERLOCK_RATELIMIT_REDIS_PREFIX": prefix}
    return env


def redis_prefix() -> str:
    return f"ilbench-{uuid.uuid4().hex[:12]}"


def meter_for(backend: str, options: Options, service_pid: int | None) -> Meter:
    async def meter() -> dict[str, float]:
        readings = {"machine": machine_busy_seconds(), "service": cpu_seconds(service_pid or "self")}
        if service_pid is not None:
            readings["client"] = cpu_seconds()
        if backend == "redis":
            readings["redis"] = await asyncio.to_thread(redis_cpu_seconds, options.redis_url)
        return readings

    return meter


def run_grpc(backend: str, options: Options) -> Result:
    address = f"127.0.0.1:{free_port()}"
    prefix = redis_prefix()
    try:
        with ServiceProcess("services.ratelimit", service_env(backend, address, options, prefix)) as service:
            service.wait_until(lambda: grpc_serving(address, SERVICE_NAME), STARTUP_SECONDS)
            measured, stats = asyncio.run(_load_grpc(address, backend, options, service.pid))
            result = Result.of(backend, "grpc", measured, peak_rss_kib(service.pid))
            result.service_stats = stats
            if service.exited():
                raise RuntimeError(f"the service exited during the run:\n{service.log()}")
            if log := service.log().strip():
                print(f"[{backend}] service log:\n{log}", file=sys.stderr)
    finally:
        if backend == "redis":
            deleted = delete_redis_prefix(options.redis_url, prefix)
    if backend == "redis":
        result.redis_keys_deleted = deleted
    return result


async def _load_grpc(address: str, backend: str, options: Options, pid: int) -> tuple[Measured, dict[str, Any]]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(options.channels)]
    try:
        measured = await drive(GrpcTarget(channels), Workload(options.keys), options, meter_for(backend, options, pid))
        stats = await ratelimit_pb2_grpc.RateLimitServiceStub(channels[0]).GetStats(
            pb.GetStatsRequest(), timeout=RPC_TIMEOUT_SECONDS
        )
    finally:
        for channel in channels:
            await channel.close(grace=None)
    fields = ("checks", "allowed", "refused", "settles", "backend_errors", "failed_open", "failed_closed", "backend")
    return measured, {name: getattr(stats, name) for name in fields}


def run_backend(backend: str, options: Options) -> Result:
    """backend mode: one child process per backend, so each has its own peak RSS."""
    prefix = redis_prefix()
    argv = [sys.executable, "-m", "bench.ratelimit", "--child", "--mode", "backend", "--backend", backend]
    argv += ["--seconds", str(options.seconds), "--warmup", str(options.warmup)]
    argv += ["--concurrency", str(options.concurrency), "--keys", str(options.keys), "--seed", str(options.seed)]
    argv += ["--settle-fraction", str(options.settle_fraction), "--redis-url", options.redis_url]
    argv += ["--redis-prefix", prefix]
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, check=False, timeout=options.warmup + options.seconds + 60)
    finally:
        if backend == "redis":
            deleted = delete_redis_prefix(options.redis_url, prefix)
    if done.returncode != 0:
        raise RuntimeError(f"backend-only run of {backend} failed with exit code {done.returncode}")
    result = Result(**json.loads(done.stdout))
    if backend == "redis":
        result.redis_keys_deleted = deleted
    return result


async def child_backend(backend: str, options: Options, prefix: str) -> Result:
    """In the child: build the backend as the service would, and drive it."""
    env = service_env(backend, "127.0.0.1:0", options, prefix)
    settings = RateLimitSettings.from_env(env)
    counters = build_backend(settings)
    try:
        measured = await drive(
            BackendTarget(counters, settings), Workload(options.keys), options, meter_for(backend, options, None)
        )
    finally:
        await counters.close()
    return Result.of(backend, "backend", measured, peak_rss_kib())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ratelimit",
        description="Benchmark the ratelimit service's Check decisions with the memory and Redis backends.",
    )
    parser.add_argument("--mode", choices=("grpc", "backend"), default="grpc",
                        help="grpc: the real service over gRPC (default); backend: acquire() in-process")  # fmt: skip
    parser.add_argument("--backend", choices=("memory", "redis", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per backend (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (default 32)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct API keys (default 1000)")
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels the calls share (default 1)")
    parser.add_argument("--settle-fraction", type=float, default=0.5,
                        help="share of admitted checks followed by Settle (default 0.5)")  # fmt: skip
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"default {DEFAULT_REDIS_URL}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    # Internal: the per-backend child process of backend mode.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-prefix", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.keys < 1 or args.channels < 1:
        parser.error("--seconds must be positive, --warmup not negative, --concurrency, --keys and --channels >= 1")
    if not 0 <= args.settle_fraction <= 1:
        parser.error("--settle-fraction must be between 0 and 1")
    return args


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def report(options: Options, results: Sequence[Result], load_before: Sequence[float]) -> dict[str, Any]:
    return {
        "benchmark": "ratelimit",
        "mode": options.mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "seconds": options.seconds,
            "warmup": options.warmup,
            "concurrency": options.concurrency,
            "keys": options.keys,
            "channels": options.channels,
            "settle_fraction": options.settle_fraction,
            "seed": options.seed,
            "redis_url": redacted(options.redis_url),
            "endpoint": ENDPOINT,
            "scopes_per_check": 3,
            "rules": RULES_ENV,
            "spent_key_every": SPENT_EVERY,
        },
        "machine": {
            "cpus": os.cpu_count(),
            # 1, 5 and 15 minute load averages before the run.
            "load_average": [round(load, 2) for load in load_before],
            "python": platform.python_version(),
            "grpc": grpc.__version__,
        },
        "results": [asdict(result) for result in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ("memory", "redis") if args.backend == "both" else (args.backend,)
    options = Options(
        mode=args.mode,
        backends=backends,
        seconds=args.seconds,
        warmup=args.warmup,
        concurrency=args.concurrency,
        keys=args.keys,
        channels=args.channels,
        settle_fraction=args.settle_fraction,
        redis_url=args.redis_url,
        seed=args.seed,
    )
    if args.child:
        result = asyncio.run(child_backend(backends[0], options, args.redis_prefix))
        print(json.dumps(asdict(result)))
        return 0
    if "redis" in backends and (why := redis_reachable(options.redis_url)):
        print(f"Redis at {redacted(options.redis_url)} is not reachable ({why}); use --backend memory or --redis-url.",
              file=sys.stderr)  # fmt: skip
        return 2
    run = run_grpc if options.mode == "grpc" else run_backend
    load_before = os.getloadavg()
    results = []
    for backend in backends:
        print(f"{backend}: {options.warmup:g} s warm-up, {options.seconds:g} s measured ...", file=sys.stderr)
        results.append(run(backend, options))
    print(
        f"\nratelimit decisions, {options.mode} mode: {options.concurrency} in flight, {options.keys} keys, "
        f"{options.seconds:g} s per backend after {options.warmup:g} s warm-up; "
        f"{options.settle_fraction:.0%} of admitted checks settled (settles not counted as decisions).\n"
    )
    print(markdown_table(HEADERS, [result.row() for result in results]))
    if args.json:
        args.json.write_text(json.dumps(report(options, results, load_before), indent=2) + "\n")
    for r in results:
        if r.other_cpu_percent > BUSY_OTHER_CPU_PERCENT:
            print(f"note: other processes used {r.other_cpu_percent:.0f}% CPU during the {r.backend} run; "
                  "its figures are disturbed.", file=sys.stderr)  # fmt: skip
    failed = [r for r in results if r.errors or r.settle_errors or not r.decisions]
    for r in failed:
        print(f"{r.backend}: {r.errors} check errors, {r.settle_errors} settle errors; first: {r.first_error}",
              file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
