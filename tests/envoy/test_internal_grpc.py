"""Internal gRPC clients reach every service through Envoy's plaintext HTTP/2 listener,
routed by the service's package prefix (health and reflection by a header)."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from tests.envoy.helpers import access_log_lines
from tests.support.fronted import FrontedStack

pytestmark = pytest.mark.e2e


def test_catalog_through_envoy(fronted: FrontedStack) -> None:
    with grpc.insecure_channel(fronted.grpc_addr) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        reply = catalog.ListModels(
            catalog_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {fronted.api_key}")], timeout=10
        )
    assert {"demo-chat", "demo-embed"} <= {model.id for model in reply.models}


def test_a_router_stream_through_envoy(fronted: FrontedStack) -> None:
    request_id = f"grpc-{uuid.uuid4().hex[:12]}"
    request = pb.ChatStreamRequest(
        request=pb.ChatRequest(
            model="demo-chat",
            messages=[pb.Message(role=pb.ROLE_USER, content="stream through envoy")],
            caller=pb.CallerContext(request_id=request_id),
        )
    )
    started = time.monotonic()
    arrivals = []
    with grpc.insecure_channel(fronted.grpc_addr) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        for _ in router.ChatStream(request, metadata=[("x-request-id", request_id)], timeout=30):
            arrivals.append(time.monotonic() - started)
    ended = time.monotonic() - started
    assert len(arrivals) > 10
    assert arrivals[0] < ended - 0.2, (arrivals[0], ended)
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == request_id)
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    assert line["upstream_cluster"] == "router"
    assert line["path"] == "/interlock.router.v1.RouterService/ChatStream"
    assert line["grpc_status"] == "OK"


def test_health_is_routed_by_header(fronted: FrontedStack) -> None:
    with grpc.insecure_channel(fronted.grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        router = health_pb2.HealthCheckRequest(service="interlock.router.v1.RouterService")
        # No header: the router answers.
        assert health.Check(router, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        for name in ("catalog", "ratelimit", "usage"):
            upstream = [("x-interlock-upstream", name)]
            assert health.Check(health_pb2.HealthCheckRequest(), metadata=upstream, timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            # That service does not know the router's name: the check went where the header said.
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(router, metadata=upstream, timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_unknown_service_is_unimplemented(fronted: FrontedStack) -> None:
    with grpc.insecure_channel(fronted.grpc_addr) as channel:
        call = channel.unary_unary(
            "/interlock.nothing.v1.NothingService/Do",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # A method the usage service does have, through its prefix.
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        count = usage.CountEvents(usage_pb2.CountEventsRequest(request_id="never-sent"), timeout=10)
        assert count.count == 0
