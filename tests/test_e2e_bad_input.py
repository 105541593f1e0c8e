"""Bad input of every kind: a clear 4xx in the error shape, never a 500, and the stack stays up."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import MAX_BODY_BYTES
from tests.support.openai_schema import validate
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
MSGS = [{"role": "user", "content": "hi"}]


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    assert set(body) == {"error", "request_id", "status"}
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body


def post(stack: Stack, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}", headers={**stack.headers(), **kwargs.pop("headers", {})}, timeout=30, **kwargs
    )


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "ERR_INVALID_TYPE"),
        (b'"text"', "ERR_INVALID_TYPE"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_malformed_bodies(stack: Stack, content: bytes, code: str) -> None:
    body = assert_error(post(stack, "/chat/completions", content=content), 400, code)
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": MSGS}, "model", "ERR_MISSING_FIELD"),
        ({"model": "demo-chat"}, "messages", "ERR_MISSING_FIELD"),
        ({"model": 5, "messages": MSGS}, "model", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": "hi"}, "messages", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": []}, "messages", "ERR_INVALID_VALUE"),
        ({"model": "demo-chat", "messages": [{"content": "x"}]}, "messages[0].role", "ERR_MISSING_FIELD"),
        (
            {"model": "demo-chat", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "ERR_INVALID_VALUE",
        ),
        (
            {"model": "demo-chat", "messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "ERR_INVALID_TYPE",
        ),
        (
            {"model": "demo-chat", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
            "ERR_MISSING_FIELD",
        ),
        ({"model": "demo-chat", "messages": MSGS, "temperature": 2.5}, "temperature", "ERR_INVALID_VALUE"),
        ({"model": "demo-chat", "messages": MSGS, "temperature": -0.1}, "temperature", "ERR_INVALID_VALUE"),
        ({"model": "demo-chat", "messages": MSGS, "temperature": "hot"}, "temperature", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": MSGS, "temperature": True}, "temperature", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": MSGS, "max_tokens": 0}, "max_tokens", "ERR_INVALID_VALUE"),
        ({"model": "demo-chat", "messages": MSGS, "max_tokens": 1.5}, "max_tokens", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": MSGS, "n": 0}, "n", "ERR_INVALID_VALUE"),
        ({"model": "demo-chat", "messages": MSGS, "stream": "yes"}, "stream", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": MSGS, "stop": [1]}, "stop", "ERR_INVALID_VALUE"),
        (
            {"model": "demo-chat", "messages": MSGS, "tools": [{"type": "function"}]},
            "tools[0].function",
            "ERR_MISSING_FIELD",
        ),
        ({"model": "demo-chat", "messages": MSGS, "tool_choice": "maybe"}, "tool_choice", "ERR_INVALID_VALUE"),
        (
            {"model": "demo-chat", "messages": MSGS, "route": {"latency_budget_ms": -1}},
            "route.latency_budget_ms",
            "ERR_INVALID_VALUE",
        ),
        ({"model": "demo-chat", "messages": MSGS, "route": {"fallback": "gpt"}}, "route.fallback", "ERR_INVALID_TYPE"),
        ({"model": "demo-chat", "messages": MSGS, "metadata": "trace"}, "metadata", "ERR_INVALID_TYPE"),
    ],
)
def test_invalid_chat_fields(stack: Stack, payload: dict[str, Any], param: str, code: str) -> None:
    body = assert_error(post(stack, "/chat/completions", json=payload), 400, code, param)
    assert param.split("[", maxsplit=1)[0].split(".", maxsplit=1)[0] in body["error"]["message"]


def test_invalid_fields_on_other_endpoints(stack: Stack) -> None:
    assert_error(post(stack, "/completions", json={"model": "demo-instruct"}), 400, "ERR_MISSING_FIELD", "prompt")
    assert_error(
        post(stack, "/completions", json={"model": "demo-instruct", "prompt": 7}), 400, "ERR_INVALID_TYPE", "prompt"
    )
    assert_error(post(stack, "/embeddings", json={"model": "demo-embed"}), 400, "ERR_MISSING_FIELD", "input")
    assert_error(
        post(stack, "/embeddings", json={"model": "demo-embed", "input": []}), 400, "ERR_INVALID_TYPE", "input"
    )
    assert_error(
        post(stack, "/embeddings", json={"model": "demo-embed", "input": "x", "encoding_format": "hex"}),
        400, "ERR_INVALID_VALUE", "encoding_format",
    )  # fmt: skip
    assert_error(
        post(stack, "/embeddings", json={"model": "demo-embed", "input": "x", "dimensions": 4096}),
        400, "ERR_INVALID_VALUE", "dimensions",
    )  # fmt: skip
    assert_error(
        httpx.get(f"{stack.base_url}/models", params={"type": "banana"}, headers=stack.headers()), 400, param="type"
    )


def test_model_on_wrong_endpoint(stack: Stack) -> None:
    assert_error(
        post(stack, "/chat/completions", json={"model": "demo-embed", "messages": MSGS}),
        400,
        "model_not_supported",
        "model",
    )
    assert_error(
        post(stack, "/embeddings", json={"model": "demo-chat", "input": "x"}), 400, "model_not_supported", "model"
    )


def test_unknown_model(stack: Stack) -> None:
    for path, payload in [
        ("/chat/completions", {"model": "nope", "messages": MSGS}),
        ("/chat/completions", {"model": "nope", "messages": MSGS, "stream": True}),
        ("/completions", {"model": "nope", "prompt": "x"}),
        ("/embeddings", {"model": "nope", "input": "x"}),
    ]:
        body = assert_error(post(stack, path, json=payload), 404, "model_not_found", "model")
        assert body["error"]["type"] == "not_found_error"
    assert_error(httpx.get(f"{stack.base_url}/models/nope", headers=stack.headers()), 404, "model_not_found")


def test_context_length_exceeded(stack: Stack) -> None:
    payload = {"model": "tiny-context", "messages": [{"role": "user", "content": "word " * 60}]}
    assert_error(post(stack, "/chat/completions", json=payload), 400, "context_length_exceeded", "messages")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic abc"},
        {"x-api-key": "wrong"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_invalid_key(stack: Stack, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{stack.base_url}/chat/completions", headers=headers, json={"model": "demo-chat", "messages": MSGS}
    )
    body = assert_error(response, 401, "invalid_api_key")
    assert body["error"]["type"] == "authentication_error"
    assert "wrong" not in response.text  # a presented key is never echoed back


def test_body_over_limit(stack: Stack) -> None:
    big = {"model": "demo-chat", "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}
    assert_error(post(stack, "/chat/completions", json=big), 413, "request_too_large")

    def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "demo-chat", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'

    assert_error(post(stack, "/chat/completions", content=chunks()), 413, "request_too_large")


def test_unknown_route_and_method(stack: Stack) -> None:
    assert_error(httpx.get(f"{stack.base_url}/nothing-here", headers=stack.headers()), 404, "unknown_url")
    assert_error(httpx.get(f"{stack.base_url}/chat/completions", headers=stack.headers()), 405, "method_not_allowed")


def test_client_disconnect_mid_stream_leaves_stack_healthy(stack: Stack) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {stack.api_key}\r\n".encode()
    )
    payload = b'{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "long story"}]}'
    host, port = stack.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # socket closed mid-stream here
    time.sleep(0.2)
    ok = post(stack, "/chat/completions", json={"model": "demo-chat", "messages": MSGS})
    assert ok.status_code == 200
    assert stack.process.poll() is None
