"""Smoke test of the gateway benchmark (bench/gateway.py, bench/loadgen.py,
bench/mock_upstream.py): the load generator reads the mock's plain, chunked
and streamed answers, and the whole script runs direct + Interlock and prints
its tables. A test of the harness, never of speed: no figure is compared with a
threshold beyond being sane."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gateway_targets import Target, start_mock
from bench.loadgen import LoadSpec, run_load

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mock() -> Iterator[Target]:
    target = start_mock(ttft_ms=50, token_delay_ms=2, tokens=5)
    try:
        yield target
    finally:
        target.stop()


def _spec(mock: Target, **overrides: object) -> LoadSpec:
    stream = bool(overrides.get("stream"))
    body = json.dumps({"model": "m", "messages": [], **({"stream": True} if stream else {})})
    fields: dict[str, object] = {"connections": 4, "seconds": 0.5, "warmup": 0.1} | overrides
    return LoadSpec(url=mock.base_url + "/v1/chat/completions", body=body, **fields)  # type: ignore[arg-type]


def test_closed_loop_counts_plain_answers(mock: Target) -> None:
    result = asyncio.run(run_load(_spec(mock)))
    assert result["mode"] == "closed"
    assert result["ok"] > 10
    assert result["errors"] == {}
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"] < 1000
    assert result["rps"] == pytest.approx(result["ok"] / 0.5)
    assert result["ttft_p50_ms"] is None


def test_stream_time_to_first_token_follows_the_mock(mock: Target) -> None:
    result = asyncio.run(run_load(_spec(mock, stream=True)))
    assert result["ok"] >= 4
    assert result["errors"] == {}
    # 50 ms to the first token, then 4 more tokens 2 ms apart.
    assert 45 <= result["ttft_p50_ms"] < result["p50_ms"] < 1000
    assert result["p50_ms"] >= 55


def test_open_loop_runs_at_the_rate_and_counts_statuses(mock: Target) -> None:
    result = asyncio.run(run_load(_spec(mock, rate=200.0)))
    assert result["mode"] == "open"
    assert 80 <= result["ok"] <= 110  # 200/s for 0.5 s
    wrong_path = LoadSpec(url=mock.base_url + "/v1/nothing", body="{}", seconds=0.3, warmup=0.0)
    refused = asyncio.run(run_load(wrong_path))
    assert refused["ok"] == 0
    assert set(refused["errors"]) == {"404"}
    assert "not found" in refused["error_samples"]["404"]


def test_gateway_script_prints_direct_and_interlock(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    argv = [sys.executable, "-m", "bench.gateway", "--reps", "1", "--seconds", "0.5", "--warmup", "0.2"]
    argv += ["--skip-litellm", "--scenarios", "chat-1c,stream-8c", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("### chat-1c", "### stream-8c", "### Overhead vs direct", "### Targets"):
        assert heading in done.stdout
    assert "litellm: unavailable: skipped" in done.stdout
    figures = json.loads(out.read_text())
    runs = figures["results"]["stream-8c"]
    assert set(runs) == {"direct", "interlock"}
    interlock = runs["interlock"][0]
    assert interlock["errors"] == {}
    assert interlock["ok"] > 0
    assert interlock["ttft_p50_ms"] >= runs["direct"][0]["ttft_p50_ms"] * 0.9
    assert interlock["processes"] >= 5  # `interlock up`, four services and the edge
    assert interlock["rss_mb"] > 0
    assert interlock["cpu_pct"] > 0
