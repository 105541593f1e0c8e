"""Envoy's own answers: the per-IP and keyless-caller limits of its global rate limit
filter (decided by the ratelimit service), and its local replies, all in the public
error shape with the request's id."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.envoy.helpers import access_log_lines, client_for
from tests.support.fronted import FrontedStack

pytestmark = pytest.mark.e2e


def assert_public_error(reply: httpx.Response, status: int, error_type: str) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error", "request_id", "status"}
    assert set(body["error"]) == {"type", "message", "param", "code"}
    assert body["status"] == status
    assert body["error"]["type"] == error_type
    assert body["request_id"] == reply.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


def roomy_key(fronted: FrontedStack, public: httpx.Client) -> str:
    """A key whose own limits are far above the IP rule, known to the edge."""
    reply = public.post(
        "/v1/keys",
        json={"name": f"ip-{uuid.uuid4().hex[:6]}", "requests_per_minute": 100000, "burst": 100000},
        headers=fronted.admin_headers(),
    )
    assert reply.status_code == 200, reply.text
    secret = str(reply.json()["key"])
    deadline = time.monotonic() + 10
    while (
        public.post("/v1/chat/completions", json={}, headers={"Authorization": f"Bearer {secret}"}).status_code != 400
    ):
        assert time.monotonic() < deadline, "the edge never learned the key"
        time.sleep(0.05)
    return secret


def test_the_per_ip_limit(fronted: FrontedStack, public: httpx.Client) -> None:
    assert fronted.ip_rpm > 0, "both stacks configure a per-IP rule"
    headers = {"Authorization": f"Bearer {roomy_key(fronted, public)}"}
    admitted = 0
    refused = None
    # From an address of its own, so the rest of the suite keeps its quota.
    with client_for(fronted, source="127.0.0.77") as client:
        for _ in range(fronted.ip_rpm * 2 + 20):
            reply = client.get("/v1/models", headers=headers)
            if reply.status_code == 429:
                refused = reply
                break
            assert reply.status_code == 200, reply.text
            admitted += 1
    assert refused is not None, f"no 429 after {admitted} requests"
    # Envoy takes the IP's quota once per request; the edge (ip limits off) takes none of it.
    assert fronted.ip_rpm <= admitted <= fronted.ip_rpm + 10
    body = assert_public_error(refused, 429, "rate_limit_error")
    assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "ip:" in body["error"]["message"]  # type: ignore[index]
    assert refused.headers["x-ratelimit-limit"] == str(fronted.ip_rpm)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) >= int(time.time())
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-envoy-ratelimited"] == "true"
    # Refused by Envoy: the edge never saw it.
    request_id = refused.headers["x-request-id"]
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == request_id)
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    assert line["status"] == 429
    assert "RL" in line["response_flags"]
    assert line["client_ip"] == "127.0.0.77"
    # Another address is not affected.
    assert public.get("/v1/models", headers=headers).status_code == 200


def test_callers_without_a_key_have_their_own_limit(fronted: FrontedStack) -> None:
    assert fronted.anonymous_rpm > 0, "both stacks configure a rule for callers without a key"
    statuses = []
    with client_for(fronted, source="127.0.0.78") as client:
        for _ in range(fronted.anonymous_rpm * 2 + 10):
            reply = client.get("/v1/models")
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                break
    # The edge refuses each with 401 until Envoy's keyless rule is used up.
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {401}
    assert fronted.anonymous_rpm <= len(statuses) - 1 <= fronted.anonymous_rpm + 5
    body = assert_public_error(reply, 429, "rate_limit_error")
    assert "anon:" in body["error"]["message"]  # type: ignore[index]
    # A caller with a key from that address is not held by the keyless rule.
    with client_for(fronted, source="127.0.0.78") as client:
        assert client.get("/v1/models", headers=fronted.headers()).status_code == 200


def test_the_messages_api_is_refused_in_anthropics_shape(fronted: FrontedStack) -> None:
    """Envoy's 429 on /v1/messages reads like the edge's answers there: Anthropic's shape."""
    statuses = []
    with client_for(fronted, source="127.0.0.79") as client:
        for _ in range(fronted.anonymous_rpm * 2 + 10):
            reply = client.post("/v1/messages", json={"model": "demo", "max_tokens": 8, "messages": []})
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                break
            assert reply.json()["type"] == "error", reply.text
    assert statuses[-1] == 429, statuses
    body = reply.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "anon:" in body["error"]["message"]
    assert body["request_id"] == reply.headers["x-request-id"]
    assert int(reply.headers["retry-after"]) >= 1
    assert "x-ratelimit-limit" in reply.headers


def test_internal_paths_are_not_public(fronted: FrontedStack, public: httpx.Client, edge: httpx.Client) -> None:
    assert edge.get("/metrics").status_code == 200
    for path in ("/metrics", "/healthz"):
        body = assert_public_error(public.get(path, headers=fronted.headers()), 404, "not_found_error")
        assert body["error"]["code"] == "unknown_url"  # type: ignore[index]
    # A path nobody serves: the edge's own 404, with Envoy's request id.
    body = assert_public_error(public.get("/v2/nothing", headers=fronted.headers()), 404, "not_found_error")
    assert body["error"]["message"] == "Unknown request URL: GET /v2/nothing."  # type: ignore[index]


def test_a_body_over_the_limit_is_refused_by_envoy(fronted: FrontedStack, public: httpx.Client) -> None:
    too_big = b'{"model": "demo-chat", "input": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    reply = public.post(
        "/v1/embeddings", content=too_big, headers={**fronted.headers(), "content-type": "application/json"}
    )
    body = assert_public_error(reply, 413, "invalid_request_error")
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]
    request_id = reply.headers["x-request-id"]
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == request_id)
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    # Envoy's buffer filter answered; the request never reached the edge.
    assert line["details"] == "request_payload_too_large"
    assert line["upstream_host"] is None
