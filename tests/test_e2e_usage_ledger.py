"""Every request that reaches the router yields exactly one usage event."""

from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi"}]


def _rid() -> str:
    return "test-" + uuid.uuid4().hex


def _post(stack: Stack, rid: str, path: str, payload: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}", headers={**stack.headers(), "X-Request-Id": rid}, json=payload, timeout=30
    )


def test_one_event_per_request_that_reached_the_router(stack: Stack, upstream: FakeOpenAI) -> None:
    reached: list[str] = []
    for path, payload in [
        ("/chat/completions", {"model": "demo-chat", "messages": HI}),
        ("/chat/completions", {"model": "demo-chat", "messages": HI, "stream": True}),
        ("/completions", {"model": "demo-instruct", "prompt": "x"}),
        ("/embeddings", {"model": "demo-embed", "input": ["a", "b"]}),
        ("/chat/completions", {"model": "fake-chat", "messages": HI}),
        ("/chat/completions", {"model": "no-such-model", "messages": HI}),
        ("/chat/completions", {"model": "tiny-context", "messages": [{"role": "user", "content": "w " * 100}]}),
    ]:
        rid = _rid()
        response = _post(stack, rid, path, payload)
        assert response.headers["x-request-id"] == rid
        reached.append(rid)
    failed = _rid()
    upstream.fail_next(500, times=20)  # outlasts every retry
    assert _post(stack, failed, "/chat/completions", {"model": "fake-chat", "messages": HI}).status_code == 502
    reached.append(failed)

    refused = [_rid(), _rid()]  # stopped at the edge: never reached the router
    assert (
        httpx.post(f"{stack.base_url}/chat/completions", headers={"X-Request-Id": refused[0]}, json={}).status_code
        == 401
    )
    assert _post(stack, refused[1], "/chat/completions", {"model": "demo-chat"}).status_code == 400

    assert stack.events_per_request(reached) == dict.fromkeys(reached, 1)
    for rid in refused:
        assert stack.count_events(request_id=rid) == 0


def test_cancelled_stream_is_recorded_once(stack: Stack) -> None:
    rid = _rid()
    payload = b'{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "long"}]}'
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stack.api_key}\r\n"
        f"X-Request-Id: {rid}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + payload)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert stack.wait_for_events(1, request_id=rid) == 1


def test_many_concurrent_requests_all_recorded(stack: Stack) -> None:
    ids = [_rid() for _ in range(60)]

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            replies = await asyncio.gather(*(
                http.post(f"{stack.base_url}/chat/completions", headers={**stack.headers(), "X-Request-Id": rid},
                          json={"model": "demo-chat", "messages": HI, "max_tokens": 3})
                for rid in ids
            ))  # fmt: skip
        return [r.status_code for r in replies]

    assert set(asyncio.run(fire())) == {200}
    assert stack.events_per_request(ids) == dict.fromkeys(ids, 1)
