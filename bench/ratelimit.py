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
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc

from bench.harness import (
    Latency,
    ServiceProcess,
    cpu_seconds,
    delete_redis_prefix,
    grpc_serving,
    machine_busy_seconds,
    markdown_table,
    peak_rss_kib,
    redis_cpu_seconds,
    redis_reachable,
)
from bench.ratelimit_load import (
    ENDPOINT,
    RPC_TIMEOUT_SECONDS,
    SPENT_EVERY,
    BackendTarget,
    GrpcTarget,
    Measured,
    Meter,
    Options,
    Workload,
    drive,
)
from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.common.ports import free_port
from services.ratelimit.server import build_backend
from services.ratelimit.settings import RateLimitSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RateLimitService"].full_name

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The service's own rules for the run: an overall and a chat rule per client IP
# (the chat rule applies per key too), high enough never to bind here.
RULES_ENV = {
    "INTERLOCK_RATELIMIT_IP_RPM": "100000",
    "INTERLOCK_RATELIMIT_ENDPOINT_RPM": "chat=100000,default=100000",
}
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
