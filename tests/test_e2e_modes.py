"""The two deployment modes of `interlock up`: co-located (the default: the router inside
each of N edge workers sharing the port) and microservices (the router its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from tests.support.stack import SESSION_WORKERS, Stack, stack_in_each_mode

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
ROUTER = "interlock.router.v1.RouterService"

stack = stack_in_each_mode()


def counter(url: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels on one /metrics page."""
    page = httpx.get(url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_the_sdk_chats_and_streams_in_each_mode(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=30) as sdk:
        reply = sdk.chat.completions.create(model="demo-chat", messages=HI)  # type: ignore[arg-type]
        assert '"hi"' in (reply.choices[0].message.content or "")
        chunks = list(sdk.chat.completions.create(model="demo-chat", messages=HI, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and '"hi"' in text
    pids = stack.layout["pids"]
    assert isinstance(pids, dict)
    if stack.mode == "colocated":
        assert "router" not in pids
        assert set(stack.workers) == {"edge", *(f"edge-{i}" for i in range(1, SESSION_WORKERS))} <= set(pids)
    else:
        assert {"router", "edge"} <= set(pids) and stack.workers == {}


def test_the_router_grpc_api_is_served_in_each_mode(stack: Stack) -> None:
    """Internal gRPC clients (and the usage process's jobs) call the router's address in
    stack.json: the router process's, or the co-located workers' shared listener."""
    before = _router_calls(stack)
    request = pb.ChatRequest(
        model="demo-chat",
        messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
        caller=pb.CallerContext(request_id="req-modes-grpc-" + os.urandom(4).hex()),
    )
    with grpc.insecure_channel(stack.service_addr("router")) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Chat(request, timeout=30)
    assert reply.usage.completion_tokens > 0
    # Served over gRPC: counted by the gRPC server of the process that holds the router.
    assert _router_calls(stack) == before + 1


def _router_calls(stack: Stack) -> float:
    urls = [f"{url}/metrics" for url in stack.workers.values()] or [stack.metrics_url("router")]
    name = "interlock_grpc_server_handled_total"
    return sum(counter(url, name, service=ROUTER, method="Chat", code="OK") for url in urls)


def test_both_workers_serve_the_shared_port(colocated_stack: Stack) -> None:
    stack = colocated_stack
    workers = stack.workers
    assert len(workers) == SESSION_WORKERS

    def served() -> dict[str, float]:
        return {
            name: counter(f"{url}/metrics", "interlock_http_requests_total", route=CHAT, status="200")
            for name, url in workers.items()
        }

    before = served()
    # A new connection each time: the kernel spreads connections over the sockets sharing the port.
    deadline = time.monotonic() + 60
    sent = 0
    while time.monotonic() < deadline:
        for _ in range(10):
            reply = httpx.post(
                f"{stack.base_url}/chat/completions",
                headers=stack.headers(),
                json={"model": "demo-chat", "messages": HI},
            )
            assert reply.status_code == 200, reply.text
            sent += 1
        moved = {name: count - before[name] for name, count in served().items()}
        if all(moved.values()):
            break
    assert all(moved.values()), moved
    assert sum(moved.values()) == sent  # every request was answered by one of the workers
    assert len({stack.pid(name) for name in workers}) == len(workers)


def test_a_bad_edge_mode_exits_2_with_a_clear_message() -> None:
    env = {**os.environ, "INTERLOCK_KEY_PEPPER": "pepper", "INTERLOCK_EDGE_MODE": "sidecar"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "edge: invalid settings: INTERLOCK_EDGE_MODE='sidecar' is not one of microservices, colocated"
    )


def test_workers_apply_to_the_colocated_mode_only(tmp_path: Path) -> None:
    def up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(tmp_path), *args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    refused = up("--mode", "microservices", "--workers", "2")
    assert refused.returncode == 2 and "--workers applies to --mode colocated only" in refused.stderr
    assert up("--workers", "0").returncode == 2
    assert up("--mode", "sidecar").returncode == 2
    assert not (tmp_path / "stack.json").exists()
    helped = up("--help")
    assert (
        helped.returncode == 0
        and "--mode {colocated,microservices}" in helped.stdout
        and "--workers N" in helped.stdout
    )
