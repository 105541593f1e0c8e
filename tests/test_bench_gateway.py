"""Smoke test of the gateway benchmark (bench/gateway.py, bench/loadgen.py,
bench/mock_upstream.py, bench/floors/): the load generator reads the mock's plain,
chunked and streamed answers, the reference floors forward the mock's answer with and
without their gRPC hop, and the whole script runs direct, Interlock in both modes and
the floors and prints its tables. A test of the harness, never of speed: no figure is
compared with a threshold beyond being sane."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gateway_targets import FLOORS, Target, start_floor, start_mock
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


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@pytest.mark.parametrize("name", FLOORS)
def test_floor_forwards_the_upstream_answer_and_refuses_what_it_cannot_serve(mock: Target, name: str) -> None:
    floor = start_floor(mock.base_url + "/v1", name)
    try:
        chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        assert _post(floor.base_url + "/v1/chat/completions", chat) == _post(
            mock.base_url + "/v1/chat/completions", chat
        )
        assert len(floor.pids()) == (2 if name == "floor-hop" else 1)  # the edge, and the hop if any
        for bad in (b"{not json", b"[]", b'{"model": "m", "messages": [], "stream": true}'):
            status, body = _post(floor.base_url + "/v1/chat/completions", bad)
            assert status == 400, bad
            assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # Keep-alive connections are reused, and many requests in flight at once all answer.
        result = asyncio.run(run_load(_spec(floor, connections=16, seconds=0.5)))
        assert result["errors"] == {}
        assert result["ok"] > 16
        if name == "floor-hop":
            floor.companions[0].stop()  # the hop gone: the edge answers 502, it does not hang
            status, body = _post(floor.base_url + "/v1/chat/completions", chat)
            assert status == 502
            assert "hop: UNAVAILABLE" in json.loads(body)["error"]["message"]
    finally:
        floor.stop()


def test_gateway_script_prints_every_target_beside_the_floors(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    argv = [sys.executable, "-m", "bench.gateway", "--reps", "1", "--seconds", "0.5", "--warmup", "0.2"]
    argv += ["--skip-litellm", "--scenarios", "chat-1c,stream-8c", "--interlock-workers", "2", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("### chat-1c", "### stream-8c", "### Overhead vs direct", "### Summary", "### Targets"):
        assert heading in done.stdout
    assert "litellm: unavailable: skipped" in done.stdout
    figures = json.loads(out.read_text())
    everyone = {"direct", "colocated", "microservices", "floor-hop", "floor-nohop"}
    assert set(figures["results"]["chat-1c"]) == everyone
    # The floors answer non-stream chat only: they are not run on streams.
    runs = figures["results"]["stream-8c"]
    assert set(runs) == everyone - {"floor-hop", "floor-nohop"}
    for name in ("colocated", "microservices"):
        interlock = runs[name][0]
        assert interlock["errors"] == {}
        assert interlock["ok"] > 0
        assert interlock["ttft_p50_ms"] >= runs["direct"][0]["ttft_p50_ms"] * 0.9
        assert interlock["rss_mb"] > 0
        assert interlock["pss_mb"] > 0
        assert interlock["cpu_pct"] > 0
    # `interlock up` and catalog, usage, ratelimit, then two edge workers or the router and the edge.
    assert runs["colocated"][0]["processes"] >= 6
    assert runs["microservices"][0]["processes"] >= 6
    chat = figures["results"]["chat-1c"]
    assert chat["floor-hop"][0]["processes"] == 2
    assert chat["floor-nohop"][0]["processes"] == 1
    for name in ("floor-hop", "floor-nohop"):
        assert chat[name][0]["errors"] == {}
        assert chat[name][0]["p50_ms"] >= chat["direct"][0]["p50_ms"]
    summary = done.stdout.split("### Summary", 1)[1].split("\n\n")[1]
    header = [cell.strip() for cell in summary.splitlines()[0].strip("|").split("|")]
    assert header == ["", "direct", "colocated", "microservices", "floor-hop", "floor-nohop"]
    assert "not run" in done.stdout.split("### Targets", 1)[1]  # the floors' streams
