"""The edge's last resort: a bug in a route still answers 500 in the error shape its clients
read (Anthropic's on the Messages API), with the request id, and is logged."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.middleware import EdgeMiddleware


async def broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


@pytest.fixture
def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=EdgeMiddleware(broken), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://edge")


async def test_a_bug_is_a_500_in_the_public_shape(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    answer = await client.post("/v1/chat/completions", json={})
    assert answer.status_code == 500
    body = answer.json()
    assert body["error"]["type"] == "server_error" and body["status"] == 500
    assert body["request_id"] == answer.headers["x-request-id"]
    assert "a bug" not in answer.text  # the detail stays in the log
    assert "unhandled error" in caplog.text


async def test_on_the_messages_api_it_is_in_anthropics_shape(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/messages", json={})
    assert answer.status_code == 500
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["request_id"] == answer.headers["x-request-id"]
