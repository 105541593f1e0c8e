"""The dev overlay with the co-located component, rehearsed on this machine
(tests/support/rehearsal.py): no router process runs, the edge answers the openai SDK
through Envoy with its in-process router, and the router's gRPC API that the edge pods
serve answers what still calls `router:50052` (usage's jobs, Envoy's internal listener)."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from tests.envoy.helpers import access_log_lines
from tests.support import manifests
from tests.support.fronted import FrontedStack
from tests.support.manifests import Manifests
from tests.support.rehearsal import rehearse

pytestmark = pytest.mark.e2e

COMPONENTS = ("colocated-router",)
ROUTER = "interlock.router.v1.RouterService"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def colocated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontedStack]:
    with rehearse(tmp_path_factory.mktemp("rehearsal-colocated"), "dev", components=COMPONENTS) as stack:
        yield stack


@pytest.fixture
def sdk(colocated: FrontedStack) -> Iterator[openai.OpenAI]:
    assert colocated.ca_cert is not None
    with (
        httpx.Client(verify=ssl.create_default_context(cafile=colocated.ca_cert), timeout=30) as http,
        openai.OpenAI(base_url=colocated.base_url, api_key=colocated.api_key, http_client=http, max_retries=0) as c,
    ):
        yield c


def _router_calls_over_grpc(stack: FrontedStack, method: str) -> float:
    """RouterService calls the edge's gRPC listener finished OK (the edge's own calls take the
    in-process channel and are not counted here): from the edge's /metrics, its only registry."""
    page = httpx.get(f"{stack.edge_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "interlock_grpc_server_handled_total"
        and sample.labels == {"service": ROUTER, "method": method, "code": "OK"}
    )


def test_what_is_rehearsed_has_no_router_process() -> None:
    rendered = Manifests(manifests.render("overlays/dev+components/colocated-router"))
    assert "router" not in {w.name for w in rendered.workloads()}
    assert rendered.get("Service", "router") is not None


def test_chat_and_stream_through_envoy(colocated: FrontedStack, sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="demo-chat", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert reply.model == "demo-chat"
    chunks = list(sdk.chat.completions.create(model="demo-chat", messages=HI, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert len(chunks) > 2
    logged = access_log_lines(colocated, lambda line: line.get("upstream_cluster") == "edge")
    assert [line for line in logged if line["status"] == 200 and line["path"] == "/v1/chat/completions"]


def test_execute_runs_its_job_through_router_service(colocated: FrontedStack) -> None:
    """POST /api/v2/execute: usage's job service calls router:50052, now the edge pods."""
    before = _router_calls_over_grpc(colocated, "Chat")
    with httpx.Client(verify=ssl.create_default_context(cafile=colocated.ca_cert), timeout=30) as http:
        reply = http.post(
            f"{colocated.url}/api/v2/execute/demo-chat", json={"text": "hi"}, headers=colocated.headers()
        ).json()
        deadline = time.monotonic() + 30
        while not reply.get("completed"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.1)
            reply = http.get(f"{colocated.url}/api/v2/data/{reply['requestId']}", headers=colocated.headers()).json()
    assert reply["status"] == "SUCCESS", reply
    assert reply["data"]
    assert _router_calls_over_grpc(colocated, "Chat") == before + 1


def test_internal_grpc_listener_reaches_the_edge_router(colocated: FrontedStack) -> None:
    """Envoy's internal gRPC listener sends RouterService to its router cluster (router:50052)."""
    request_id = f"grpc-{uuid.uuid4().hex[:12]}"
    request = pb.ChatRequest(
        model="demo-chat",
        messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
        caller=pb.CallerContext(request_id=request_id),
    )
    before = _router_calls_over_grpc(colocated, "Chat")
    with grpc.insecure_channel(colocated.grpc_addr) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Chat(
            request, metadata=[("x-request-id", request_id)], timeout=30
        )
    assert reply.usage.completion_tokens > 0
    assert _router_calls_over_grpc(colocated, "Chat") == before + 1
    lines = access_log_lines(colocated, lambda line: line.get("request_id") == request_id)
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    assert line["upstream_cluster"] == "router"
    assert line["grpc_status"] == "OK"
