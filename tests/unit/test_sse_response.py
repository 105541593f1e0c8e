"""The edge's SSE response, driven as a bare ASGI app: chunks go out in order, the client
leaving closes the body generator at once, and the task watching for that never outlives
the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from starlette.types import Message, Scope

from gateway.middleware import EdgeMiddleware
from gateway.sse import EventStreamResponse

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


class Client:
    """Fake ASGI receive/send: records what is sent, and disconnects when told to (or,
    with disconnect_after, once that many body chunks have gone out)."""

    def __init__(self, *, disconnect_after: int | None = None, block_send_after: int | None = None) -> None:
        self.sent: list[Message] = []
        self.left = asyncio.Event()
        self.streaming = asyncio.Event()  # set once a body chunk has gone out
        self.disconnect_after = disconnect_after
        self.block_send_after = block_send_after
        self.receivers: list[asyncio.Task[Any]] = []
        self.tasks_before = asyncio.all_tasks()

    async def receive(self) -> Message:
        task = asyncio.current_task()
        assert task is not None
        self.receivers.append(task)
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("more_body"):
            self.streaming.set()
            chunks = len(self.bodies)
            if chunks == self.disconnect_after:
                self.left.set()
            if chunks == self.block_send_after:
                await asyncio.Event().wait()  # a stalled socket: only a cancel gets us out

    @property
    def bodies(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "http.response.body"]


class Body:
    """An async generator body that records whether its finally ran."""

    def __init__(self, chunks: list[bytes], *, then: str = "end") -> None:
        self.chunks = chunks
        self.then = then  # "end", "hang" (wait for the next message forever) or "fail"
        self.closed = False

    async def __call__(self) -> AsyncGenerator[bytes, None]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.then == "hang":
                await asyncio.Event().wait()
            elif self.then == "fail":
                raise RuntimeError("the body broke")
        finally:
            self.closed = True


def assert_watcher_gone(client: Client) -> None:
    """No task the response started is still pending (one that never got to run counts too)."""
    assert all(task.done() for task in client.receivers)
    assert asyncio.all_tasks() <= client.tasks_before


async def test_chunks_go_out_in_order_then_an_empty_last_body() -> None:
    client, body = Client(), Body([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"])
    response = EventStreamResponse(body(), headers={"X-Request-Id": "req_1"})

    await response(SCOPE, client.receive, client.send)

    start, *rest = client.sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache" and headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-request-id"] == b"req_1"
    assert [(m["body"], m["more_body"]) for m in rest] == [
        (b"data: 1\n\n", True),
        (b"data: 2\n\n", True),
        (b"data: [DONE]\n\n", True),
        (b"", False),
    ]
    assert body.closed
    assert_watcher_gone(client)


async def test_a_disconnect_while_the_body_waits_closes_it_promptly() -> None:
    client, body = Client(disconnect_after=1), Body([b"data: 1\n\n"], then="hang")

    serving = asyncio.create_task(EventStreamResponse(body())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(serving, timeout=2)

    assert body.closed  # its finally ran: in relay(), that cancels the router call
    assert [m["body"] for m in client.bodies] == [b"data: 1\n\n"]  # no last body after a disconnect
    assert_watcher_gone(client)
    assert serving.cancelling() == 0  # the cancel it used on itself is taken back


async def test_a_disconnect_while_send_is_stuck_closes_the_suspended_body() -> None:
    client = Client(disconnect_after=1, block_send_after=1)
    body = Body([b"data: 1\n\n", b"data: 2\n\n"])

    await asyncio.wait_for(EventStreamResponse(body())(SCOPE, client.receive, client.send), timeout=2)

    assert body.closed  # suspended at a yield, so only aclose() runs its finally
    assert_watcher_gone(client)


async def test_a_failing_body_propagates_and_is_closed() -> None:
    client, body = Client(), Body([b"data: 1\n\n"], then="fail")

    with pytest.raises(RuntimeError, match="the body broke"):
        await EventStreamResponse(body())(SCOPE, client.receive, client.send)

    assert body.closed
    assert_watcher_gone(client)


async def test_a_cancel_from_outside_is_not_swallowed() -> None:
    client, body = Client(), Body([b"data: 1\n\n"], then="hang")
    serving = asyncio.create_task(EventStreamResponse(body())(SCOPE, client.receive, client.send))
    await client.streaming.wait()

    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving

    assert body.closed
    assert_watcher_gone(client)


async def test_the_edge_middleware_still_adds_its_headers() -> None:
    client = Client()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scope["state"]["ratelimit_headers"] = [(b"x-ratelimit-remaining-requests", b"9")]
        await EventStreamResponse(Body([b"data: 1\n\n"])())(scope, receive, send)

    await EdgeMiddleware(app)(dict(SCOPE), client.receive, client.send)

    headers = dict(client.sent[0]["headers"])
    assert headers[b"x-request-id"].startswith(b"req_")
    assert headers[b"x-ratelimit-remaining-requests"] == b"9"
    assert client.bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_on_close_runs_once_even_when_the_client_left_before_the_first_chunk() -> None:
    client, body = Client(), Body([b"data: 1\n\n"])
    closes: list[str] = []

    async def slow_start(message: Message) -> None:
        if message["type"] == "http.response.start":
            client.left.set()
            await asyncio.sleep(0.01)  # the disconnect lands while the head is going out
        await client.send(message)

    response = EventStreamResponse(body(), on_close=lambda: closes.append("closed"))
    await asyncio.wait_for(response(SCOPE, client.receive, slow_start), timeout=2)

    assert not body.closed  # never started, so its finally never ran: on_close is what cleans up
    assert closes == ["closed"]
    assert client.bodies == []
    assert_watcher_gone(client)

    client, body = Client(), Body([b"data: 1\n\n"])
    closes.clear()
    await EventStreamResponse(body(), on_close=lambda: closes.append("closed"))(SCOPE, client.receive, client.send)
    assert closes == ["closed"] and body.closed
