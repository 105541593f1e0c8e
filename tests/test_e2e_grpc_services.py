"""Every service answers gRPC health SERVING and lists its services by reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
EXPECTED = {
    "catalog": "interlock.catalog.v1.CatalogService",
    "router": "interlock.router.v1.RouterService",
    "ratelimit": "interlock.ratelimit.v1.RateLimitService",
    "usage": "interlock.usage.v1.UsageService",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_and_reflection(stack: Stack, name: str) -> None:
    with grpc.insecure_channel(stack.service_addr(name)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", EXPECTED[name]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert {EXPECTED[name], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        described = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=EXPECTED[name])]), timeout=5
        ))  # fmt: skip
        assert described[0].file_descriptor_response.file_descriptor_proto
