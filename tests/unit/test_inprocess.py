"""The in-process channel's own edges, against a small servicer: statuses without the error
mapping (unmapped exceptions, set_code, unknown methods), cancel() from another task, a
stream that runs ahead of its reader, and close(). What the router does over both
transports is tests/test_router_transports.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.grpc_server import Registration
from services.common.inprocess import STREAM_WINDOW, InProcessChannel


class Servicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self) -> None:
        self.finished: list[str] = []
        self.produced = 0
        self.started = asyncio.Event()

    async def Chat(self, request: pb.ChatRequest, context: Any) -> pb.ChatResponse:
        if request.model == "raise":
            raise RuntimeError("boom")
        if request.model == "set-code":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("not now")
            return pb.ChatResponse(id="ignored")
        if request.model == "slow":
            self.started.set()
            try:
                await asyncio.sleep(30)
            finally:
                self.finished.append("slow")
        return pb.ChatResponse(id="ok")

    async def ChatStream(self, wrapped: pb.ChatStreamRequest, context: Any) -> AsyncIterator[pb.ChatStreamResponse]:
        try:
            for _ in range(100):
                self.produced += 1
                yield pb.ChatStreamResponse()
                self.started.set()
            await asyncio.sleep(30)
        finally:
            self.finished.append("stream")

    # Not called here; defined so the servicer is complete.
    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        raise NotImplementedError

    async def CompleteStream(
        self, wrapped: pb.CompleteStreamRequest, context: Any
    ) -> AsyncIterator[pb.CompleteStreamResponse]:
        nothing: tuple[pb.CompleteStreamResponse, ...] = ()
        for never in nothing:
            yield never
        raise NotImplementedError

    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        raise NotImplementedError


def channel(servicer: Servicer) -> InProcessChannel:
    registration = Registration(router_pb2_grpc.add_RouterServiceServicer_to_server, servicer, "router")
    # No error mapping: what a bare grpc.aio server does with each outcome.
    return InProcessChannel([registration], server_interceptors=[])


async def until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_unmapped_exception_is_unknown_and_set_code_wins_over_the_answer() -> None:
    stub = router_pb2_grpc.RouterServiceStub(channel(Servicer()))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(pb.ChatRequest(model="raise"))
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    assert "boom" in (raised.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(pb.ChatRequest(model="set-code"))
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "not now")


async def test_an_unknown_method_is_unimplemented() -> None:
    call = channel(Servicer()).unary_unary("/interlock.router.v1.RouterService/Nope")(pb.ChatRequest())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_cancel_from_another_task_stops_the_handler_and_not_the_waiters_task() -> None:
    servicer = Servicer()
    call = router_pb2_grpc.RouterServiceStub(channel(servicer)).Chat(pb.ChatRequest(model="slow"))
    waiting = asyncio.ensure_future(call)
    await servicer.started.wait()
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert servicer.finished == ["slow"]
    assert await call.code() == grpc.StatusCode.CANCELLED
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


async def test_a_stream_runs_a_window_ahead_of_its_reader_and_close_stops_it() -> None:
    servicer = Servicer()
    local = channel(servicer)
    call = router_pb2_grpc.RouterServiceStub(local).ChatStream(pb.ChatStreamRequest())
    await call.read()
    await until(lambda: servicer.produced > STREAM_WINDOW)
    await asyncio.sleep(0.05)
    # Waiting on the reader, not producing all 100 at once.
    assert servicer.produced <= STREAM_WINDOW + 2
    await local.close()
    await until(lambda: servicer.finished == ["stream"])
    assert call.cancelled()
    with pytest.raises(grpc.aio.UsageError):
        router_pb2_grpc.RouterServiceStub(local).Chat(pb.ChatRequest())
