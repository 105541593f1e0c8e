"""The router takes the edge's prompt count instead of counting again (it need not hold
the tokenizer tables), and counts for itself when a direct gRPC caller sends none."""

from __future__ import annotations

import grpc
import pytest

from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def _chat(prompt_tokens: int) -> pb.ChatRequest:
    # tiny-context has a 40-token window; "hi" alone fits in it.
    return pb.ChatRequest(
        model="tiny-context",
        messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
        caller=pb.CallerContext(request_id="req-count-" + str(prompt_tokens), prompt_tokens=prompt_tokens),
    )


def test_router_trusts_the_edge_count_and_counts_itself_without_one(stack: Stack) -> None:
    with grpc.insecure_channel(stack.service_addr("router")) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        counted_here = router.Chat(_chat(0), timeout=10)
        assert 0 < counted_here.usage.prompt_tokens < 40
        with pytest.raises(grpc.RpcError) as refused:
            router.Chat(_chat(1000), timeout=10)  # the edge said 1000: over the window
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1000 prompt tokens" in (refused.value.details() or "")
