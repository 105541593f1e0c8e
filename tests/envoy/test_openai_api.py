"""The OpenAI-compatible API through Envoy with the official SDK: answers, unbuffered
streams, request ids end to end, TLS, and an access log that never holds a key."""

from __future__ import annotations

import socket
import ssl
import time
import uuid

import httpx
import openai
import pytest

from tests.envoy.helpers import access_log_lines
from tests.support.fronted import FrontedStack

pytestmark = pytest.mark.e2e


def test_chat_completion(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hello envoy"}])
    assert reply.choices[0].message.content
    assert "hello envoy" in reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.total_tokens > 0


def test_rate_limit_headers_are_the_edges_alone(fronted: FrontedStack, public: httpx.Client) -> None:
    reply = public.post(
        "/v1/chat/completions",
        json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers=fronted.headers(),
    )
    assert reply.status_code == 200, reply.text
    # The key's quota, once: Envoy adds no x-ratelimit headers of its own beside the edge's.
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        (value,) = reply.headers.get_list(name)
        assert value.isdigit(), (name, value)


def test_a_stream_arrives_as_it_is_made(sdk: openai.OpenAI) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    text = []
    stream = sdk.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "tell me something long"}], stream=True
    )
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    ended = time.monotonic() - started
    assert len(arrivals) > 10 and "".join(text)
    # The demo provider waits between tokens: a buffering proxy would deliver them all at the end.
    assert arrivals[0] < ended - 0.2, (arrivals[0], ended)
    assert arrivals[len(arrivals) // 2] < ended - 0.1


def test_embeddings(sdk: openai.OpenAI) -> None:
    reply = sdk.embeddings.create(model="demo-embed", input=["one", "two"])
    assert [item.index for item in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 256


def test_models(sdk: openai.OpenAI) -> None:
    ids = {model.id for model in sdk.models.list()}
    assert {"demo-chat", "demo-embed"} <= ids
    assert sdk.models.retrieve("demo-chat").id == "demo-chat"


def test_the_edges_errors_carry_envoys_request_id(fronted: FrontedStack, public: httpx.Client) -> None:
    reply = public.post(
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=fronted.headers(),
    )
    assert reply.status_code == 404, reply.text
    body = reply.json()
    assert body["error"]["code"] == "model_not_found"
    # Envoy made the id and passed it on: the edge's body names the one in the header.
    assert body["request_id"] == reply.headers["x-request-id"]
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == body["request_id"])
    (line,) = [line for line in lines if line.get("request_id") == body["request_id"]]
    assert line["upstream_cluster"] == "edge"
    assert line["status"] == 404


def test_a_clients_request_id_is_kept(fronted: FrontedStack, public: httpx.Client) -> None:
    mine = f"client-{uuid.uuid4().hex[:12]}"
    reply = public.post(
        "/v1/embeddings", json={"model": "demo-embed"}, headers={**fronted.headers(), "X-Request-Id": mine}
    )
    assert reply.status_code == 400, reply.text
    assert reply.headers["x-request-id"] == mine
    assert reply.json()["request_id"] == mine
    ok = public.get("/v1/models", headers={**fronted.headers(), "X-Request-Id": mine + "-ok"})
    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == mine + "-ok"


def test_the_access_log_is_json_without_credentials(fronted: FrontedStack, public: httpx.Client) -> None:
    marker = f"log-{uuid.uuid4().hex[:12]}"
    reply = public.get("/v1/models", headers={**fronted.headers(), "X-Request-Id": marker, "X-Api-Key": "x" * 20})
    assert reply.status_code == 200
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == marker)
    (line,) = [line for line in lines if line.get("request_id") == marker]
    assert line["method"] == "GET"
    assert line["path"] == "/v1/models"
    assert line["status"] == 200
    assert line["upstream_cluster"] == "edge"
    assert isinstance(line["duration_ms"], int)
    assert {"bytes_sent", "bytes_received", "response_flags", "client_ip"} <= set(line)
    text = fronted.access_log.read_text()
    for secret in (fronted.api_key, fronted.admin_key, "x" * 20, "Bearer"):
        assert secret not in text


def test_tls_offers_http2(fronted: FrontedStack) -> None:
    # Both stacks terminate TLS (the seeds require HTTPS for public traffic).
    assert fronted.ca_cert is not None and fronted.url.startswith("https://")
    host, port = fronted.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(fronted.ca_cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    # And nothing answers plain HTTP on the TLS port.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{host}:{port}/v1/models", timeout=5)
