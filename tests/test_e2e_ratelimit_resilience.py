"""Rate limiting when things go wrong: Redis killed and restarted under two
ratelimit processes (one failing open, one closed), and a memory-backed
ratelimit restarted with spend already on the ledger."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from tests.support.limits import auth, chat_body, create_key, create_key_record
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def stats(addr: str) -> rpb.GetStatsResponse:
    with grpc.insecure_channel(addr) as channel:
        return ratelimit_pb2_grpc.RateLimitServiceStub(channel).GetStats(rpb.GetStatsRequest(), timeout=5)


def chat(edge: str, secret: str) -> httpx.Response:
    return httpx.post(f"{edge}/v1/chat/completions", json=chat_body(), headers=auth(secret), timeout=10)


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        process.wait(10)


def test_redis_outage_follows_the_setting_then_recovers(
    stack: Stack, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        edges, addrs = {}, {}
        for mode in ("closed", "open"):
            env = {
                "INTERLOCK_RATELIMIT_REDIS_URL": server.url,
                "INTERLOCK_RATELIMIT_ON_BACKEND_FAILURE": mode,
                "INTERLOCK_RATELIMIT_REDIS_TIMEOUT_SECONDS": "0.2",
            }
            ratelimit, addrs[mode] = stack.start_ratelimit(tmp_path / f"ratelimit-{mode}.log", env)
            edge, edges[mode] = stack.start_extra_edge(tmp_path / f"edge-{mode}.log", ratelimit_addr=addrs[mode])
            processes += [ratelimit, edge]
        secret = create_key(stack, list(edges.values()), requests_per_minute=1, burst=3)
        assert chat(edges["closed"], secret).status_code == 200

        server.stop()
        refused = chat(edges["closed"], secret)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "ratelimit_unavailable"
        # Failing open admits, and takes nothing from quotas it cannot see.
        for _ in range(5):
            assert chat(edges["open"], secret).status_code == 200
        closed, opened = stats(addrs["closed"]), stats(addrs["open"])
        assert closed.backend == "redis" and closed.failed_closed >= 1 and closed.backend_errors >= 1
        assert opened.failed_open == 5 and opened.backend_errors >= 5

        # Redis comes back (empty, as a restarted cache-only Redis is): both enforce again, unaided.
        server.start()
        eventually(lambda: chat(edges["closed"], secret).status_code == 200)
        codes = [chat(edges["open"], secret).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        log = (tmp_path / "ratelimit-closed.log").read_text()
        assert "unavailable" in log and "is back" in log
    finally:
        server.stop()


def test_a_budget_survives_a_restart_of_the_memory_backend(
    stack: Stack, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    ratelimit, addr = stack.start_ratelimit(tmp_path / "ratelimit.log", {})
    edge_process, edge = stack.start_extra_edge(tmp_path / "edge.log", ratelimit_addr=addr)
    processes += [ratelimit, edge_process]
    cap = 0.0002
    secret, key_id = create_key_record(stack, [edge], budget_usd=cap)
    # Answers carry rate-limit headers only when the ratelimit service decided them.
    probe = create_key(stack, [edge], requests_per_minute=1000, burst=1000)
    served = 0
    while (reply := chat(edge, secret)).status_code == 200:
        served += 1
        assert served < 200, "the budget never ran out"
        time.sleep(0.05)
    assert reply.json()["error"]["code"] == "insufficient_quota"
    # The spend is on the ledger before the memory backend forgets it.
    assert stack.wait_for_events(served, key_id=key_id) == served

    ratelimit.terminate()
    ratelimit.wait(10)
    restarted, _ = stack.start_ratelimit(tmp_path / "ratelimit.log", {"INTERLOCK_RATELIMIT_LISTEN": addr})
    processes.append(restarted)
    # The edge fails open while its channel reconnects (at most ~2 s of backoff): wait until
    # the restarted service decides the probe key's requests, without spending the budget.
    eventually(lambda: "x-ratelimit-limit" in chat(edge, probe).headers)
    # Rebuilt from the ledger before it serves: still out of budget, not a fresh cap.
    again = chat(edge, secret)
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
