"""Smoke test of the ratelimit benchmark (bench/ratelimit.py): it runs end to
end with each backend and mode, and its JSON holds consistent numbers. A test
of the harness, never of speed: no figure here is compared with a threshold."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("bench-redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench.ratelimit", "--seconds", "1", "--warmup", "0.2", "--concurrency", "4"]
    done = subprocess.run(
        [*argv, "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "| backend" in done.stdout  # the markdown table
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def assert_sane(result: dict[str, Any]) -> None:
    assert result["decisions"] > 0
    assert result["decisions_per_second"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["allowed"] + result["refused"] == result["decisions"]
    assert result["errors"] == result["settle_errors"] == result["degraded"] == 0
    assert result["settles"] > 0
    assert result["settle_p50_ms"] <= result["settle_p99_ms"] <= result["settle_max_ms"]
    assert result["peak_rss_kib"] > 0


@pytest.mark.parametrize("mode", ["grpc", "backend"])
def test_memory(tmp_path: Path, mode: str) -> None:
    report = run_bench(tmp_path, "--mode", mode, "--backend", "memory")
    assert report["mode"] == mode
    [result] = report["results"]
    assert result["backend"] == "memory"
    assert_sane(result)
    assert result["redis_cpu_percent"] is None
    if mode == "grpc":
        # The service saw at least the measured checks (it also saw the warm-up's).
        assert result["service_stats"]["backend"] == "memory"
        assert result["service_stats"]["checks"] >= result["decisions"]


@pytest.mark.parametrize("mode", ["grpc", "backend"])
def test_redis_cleans_up_its_keys(tmp_path: Path, private_redis: str, mode: str) -> None:
    report = run_bench(tmp_path, "--mode", mode, "--backend", "redis", "--redis-url", private_redis)
    [result] = report["results"]
    assert result["backend"] == "redis"
    assert_sane(result)
    assert result["redis_keys_deleted"] > 0
    if mode == "grpc":
        assert result["service_stats"]["backend"] == "redis"
        assert result["service_stats"]["backend_errors"] == 0
    with redis.Redis.from_url(private_redis) as client:
        assert client.dbsize() == 0
