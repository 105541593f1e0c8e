"""Domain errors survive a real gRPC hop (pytest-grpc server) and transport errors stay generic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc
from services.common.errors import (
    InterlockError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamError,
    from_rpc_error,
    to_status,
)
from services.common.ports import free_port

ERRORS: dict[str, InterlockError] = {
    "model": ModelNotFoundError("The model 'nope' does not exist.", param="model"),
    "invalid": InvalidRequestError("'temperature' must be a number.", code="ERR_INVALID_TYPE", param="temperature"),
    "ratelimit": RateLimitError("Slow down.", retry_after=3.0),
    "timeout": UpstreamError("The provider timed out.", http_status=504, code="provider_timeout"),
    "too-large": RequestTooLargeError("Request body is larger than the limit of 10 bytes."),
}


class FailingUsage(usage_pb2_grpc.UsageServiceServicer):
    """Aborts with the error named by the first event's request id."""

    def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.ServicerContext) -> pb.RecordEventsResponse:
        name = request.events[0].request_id
        if name == "plain":
            context.abort(grpc.StatusCode.UNAVAILABLE, "connect failed: 10.0.0.7:50054 (secret-host)")
        context.abort_with_status(to_status(ERRORS[name]))
        raise AssertionError("unreachable")

    def CountEvents(self, request: pb.CountEventsRequest, context: grpc.ServicerContext) -> pb.CountEventsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")

    def GetSpend(self, request: pb.GetSpendRequest, context: grpc.ServicerContext) -> pb.GetSpendResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")

    def QueryUsage(self, request: pb.QueryUsageRequest, context: grpc.ServicerContext) -> pb.QueryUsageResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")

    def ExportUsage(self, request: pb.QueryUsageRequest, context: grpc.ServicerContext) -> pb.QueryUsageResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")

    def RecordScores(self, request: pb.RecordScoresRequest, context: grpc.ServicerContext) -> pb.RecordScoresResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")

    def RecordFeedback(
        self, request: pb.RecordFeedbackRequest, context: grpc.ServicerContext
    ) -> pb.RecordFeedbackResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by these tests")
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def grpc_addr() -> str:
    """Overrides pytest-grpc's grpc_addr, which never closes its probe socket (the
    ResourceWarning fails setup under -W error) and picks from the ephemeral range."""
    return f"localhost:{free_port()}"


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[[Any, grpc.Server], None]:
    return usage_pb2_grpc.add_UsageServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer() -> FailingUsage:
    return FailingUsage()


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[usage_pb2_grpc.UsageServiceStub]:
    return usage_pb2_grpc.UsageServiceStub


def call(stub: usage_pb2_grpc.UsageServiceStub, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.RecordEvents(pb.RecordEventsRequest(events=[pb.UsageEvent(request_id=name)]), timeout=5)
    return info.value


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_domain_error_round_trips(grpc_stub: usage_pb2_grpc.UsageServiceStub, name: str) -> None:
    sent = ERRORS[name]
    exc = call(grpc_stub, name)
    assert exc.code() == sent.grpc_code  # type: ignore[attr-defined]
    got = from_rpc_error(exc)
    assert (got.message, got.code, got.param, got.http_status, got.retry_after, got.error_type) == (
        sent.message, sent.code, sent.param, sent.http_status, sent.retry_after, sent.error_type,
    )  # fmt: skip
    assert type(got) is type(sent)


def test_specific_values_survive(grpc_stub: usage_pb2_grpc.UsageServiceStub) -> None:
    assert from_rpc_error(call(grpc_stub, "ratelimit")).retry_after == 3.0
    timeout = from_rpc_error(call(grpc_stub, "timeout"))
    assert (timeout.http_status, timeout.code) == (504, "provider_timeout")
    invalid = from_rpc_error(call(grpc_stub, "invalid"))
    assert (invalid.param, invalid.code, invalid.http_status) == ("temperature", "ERR_INVALID_TYPE", 400)
    model = from_rpc_error(call(grpc_stub, "model"))
    assert (model.code, model.http_status, model.param) == ("model_not_found", 404, "model")


def test_plain_abort_maps_to_generic_503(grpc_stub: usage_pb2_grpc.UsageServiceStub) -> None:
    exc = call(grpc_stub, "plain")
    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    got = from_rpc_error(exc)
    assert type(got) is UpstreamError
    assert (got.http_status, got.code, got.param, got.retry_after) == (503, "service_unavailable", None, None)
    assert got.message == "a gateway service is unavailable"
    assert "10.0.0.7" not in got.message and "secret-host" not in got.message
