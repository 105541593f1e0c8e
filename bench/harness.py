"""What every benchmark shares: service processes, /proc readings, latency
summaries, markdown tables and Redis clean-up.

Linux only: peak RSS and CPU time come from /proc.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int | str = "self") -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time the process has used so far, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces:
    # state is field 3, utime field 14, stime field 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all cores summed (/proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """A latency distribution in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @staticmethod
    def of_ns(samples: Sequence[int]) -> Latency:
        ordered = sorted(samples)
        ms = [s / 1e6 for s in ordered]
        return Latency(len(ms), percentile(ms, 50), percentile(ms, 99), ms[-1] if ms else 0.0)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; numbers are right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if num else "-" * (w + 2) for w, num in zip(widths, numeric, strict=True)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class ServiceProcess:
    """One service started as `python -m <module>`, its output kept in a
    temporary file; used as a context manager, which stops it on the way out."""

    def __init__(self, module: str, env: Mapping[str, str]) -> None:
        self.module = module
        self.returncode: int | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix=f"bench-{module}-")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [sys.executable, "-m", module], env=dict(env), stdout=self._log, stderr=subprocess.STDOUT
        )

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._log.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return self.process.poll() is not None

    def log(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ready() until it holds; raise with the service's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.exited():
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.module} not ready within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not drain in time; returns the exit code."""
        if self.returncode is None:
            if not self.exited():
                self.process.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
        return self.returncode


def grpc_serving(address: str, service: str) -> bool:
    """True when the gRPC health service at address reports service SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def redis_cpu_seconds(url: str) -> float:
    """CPU time the Redis server has used so far (INFO cpu)."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_reachable(url: str) -> str | None:
    """None when Redis at url answers PING, else why not."""
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def delete_redis_prefix(url: str, prefix: str) -> int:
    """SCAN for `<prefix>:*` and DEL what it finds; returns how many keys went."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete keys under prefix {prefix!r}")
    deleted = 0
    with redis.Redis.from_url(url, socket_timeout=10) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    return deleted
