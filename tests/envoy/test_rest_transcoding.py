"""The REST admin, usage and stats APIs served by Envoy's gRPC-JSON transcoder straight
from catalog and usage, answer as the edge's own transcoder does: same status, same
JSON (request ids aside), errors included."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.envoy.helpers import access_log_lines, client_for, without_request_id
from tests.support.fronted import FrontedStack

pytestmark = pytest.mark.e2e


def both(
    public: httpx.Client, edge: httpx.Client, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    """The same request through Envoy and to the edge; read-only ones are asked again a few
    times when they differ, since usage events land in the ledger in the background."""
    for _ in range(20):
        through, direct = public.request(method, path, **kwargs), edge.request(method, path, **kwargs)
        if method != "GET" or _comparable(through) == _comparable(direct):
            break
        time.sleep(0.2)
    return through, direct


def _comparable(reply: httpx.Response) -> tuple[int, Any]:
    if reply.headers.get("content-type", "").startswith("application/json"):
        return reply.status_code, without_request_id(reply.json())
    return reply.status_code, reply.text


def assert_same(through: httpx.Response, direct: httpx.Response) -> None:
    assert _comparable(through) == _comparable(direct), (through.text, direct.text)
    assert through.headers["content-type"].split(";")[0] == direct.headers["content-type"].split(";")[0]
    if through.headers["content-type"].startswith("application/json") and through.status_code >= 400:
        # Each names its own request: the one in its X-Request-Id header.
        assert through.json()["request_id"] == through.headers["x-request-id"]
        assert direct.json()["request_id"] == direct.headers["x-request-id"]


def test_keys_are_served_by_the_transcoder(fronted: FrontedStack, public: httpx.Client, edge: httpx.Client) -> None:
    admin = fronted.admin_headers()
    name = f"envoy-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "requests_per_minute": 30, "models": ["demo-*"]}
    created = public.post("/v1/keys", json=body, headers=admin)
    twin = edge.post("/v1/keys", json={**body, "name": name + "-edge"}, headers=admin)
    assert created.status_code == twin.status_code == 200, created.text
    made, made_twin = created.json(), twin.json()
    assert set(made) == set(made_twin)
    assert set(made["api_key"]) == set(made_twin["api_key"])
    assert made["api_key"]["requests_per_minute"] == 30
    assert made["api_key"]["models"] == ["demo-*"]
    assert made["key"] and made["key"] != made_twin["key"]
    # The transcoded request went to catalog, not through the edge.
    request_id = created.headers["x-request-id"]
    lines = access_log_lines(fronted, lambda line: line.get("request_id") == request_id)
    (line,) = [line for line in lines if line.get("request_id") == request_id]
    assert (line["method"], line["path"], line["upstream_cluster"]) == ("POST", "/v1/keys", "catalog")

    key_id = made["api_key"]["id"]
    assert_same(*both(public, edge, "GET", f"/v1/keys/{key_id}", headers=admin))
    listed, listed_direct = both(public, edge, "GET", "/v1/keys", headers=admin)
    assert_same(listed, listed_direct)
    assert key_id in {key["id"] for key in listed.json()["keys"]}
    assert_same(*both(public, edge, "GET", "/v1/projects", headers=admin))
    # A response_body rule: the key record alone.
    updated = public.patch(f"/v1/keys/{key_id}", json={"requests_per_minute": 40}, headers=admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["requests_per_minute"] == 40
    assert_same(*both(public, edge, "GET", f"/v1/keys/{key_id}", headers=admin))


def test_usage_and_its_csv_export(fronted: FrontedStack, public: httpx.Client, edge: httpx.Client) -> None:
    admin = fronted.admin_headers()
    assert_same(*both(public, edge, "GET", "/v1/usage", params={"group_by": "model"}, headers=admin))
    through, direct = both(public, edge, "GET", "/v1/usage/export", headers=admin)
    assert_same(through, direct)
    assert through.headers["content-type"].startswith("text/csv")
    assert through.text.startswith("key_id,")


def test_model_stats_answer_201_in_camel_case(fronted: FrontedStack, public: httpx.Client, edge: httpx.Client) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    body = {"modelId": "demo-chat", "startDay": today, "endDay": today}
    through, direct = both(public, edge, "POST", "/sdk/models/stats", json=body, headers=fronted.admin_headers())
    assert through.status_code == direct.status_code == 201, through.text
    for _ in range(20):
        if _comparable(through) == _comparable(direct):
            break
        time.sleep(0.2)
        through = public.post("/sdk/models/stats", json=body, headers=fronted.admin_headers())
        direct = edge.post("/sdk/models/stats", json=body, headers=fronted.admin_headers())
    assert_same(through, direct)
    assert isinstance(through.json(), list)


ERROR_CASES = {
    "404 from catalog": ("GET", "/v1/keys/no-such-key", None, "admin"),
    "401, an ordinary key is not the admin key": ("GET", "/v1/keys", None, "api"),
    "400 from catalog": ("POST", "/v1/keys", {"name": "bad", "requests_per_minute": -5}, "admin"),
    "404 project": ("PATCH", "/v1/projects/no-such-project", {"requests_per_minute": 1}, "admin"),
    "405, the edge's either way": ("PUT", "/v1/keys", None, "admin"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_match_the_edges(
    fronted: FrontedStack, public: httpx.Client, edge: httpx.Client, case: tuple[str, str, Any, str]
) -> None:
    method, path, body, who = case
    headers = fronted.admin_headers() if who == "admin" else fronted.headers()
    through, direct = both(public, edge, method, path, json=body, headers=headers)
    assert through.status_code >= 400
    assert_same(through, direct)
    error = through.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}


def test_no_key_at_all_is_refused_alike(fronted: FrontedStack, edge: httpx.Client) -> None:
    # From an address of its own: callers without a key have a rule of their own.
    with client_for(fronted, source="127.0.0.71") as public:
        through, direct = both(public, edge, "GET", "/v1/keys")
    assert through.status_code == 401
    assert_same(through, direct)


def test_input_envoy_cannot_transcode_gets_the_public_shape(fronted: FrontedStack, public: httpx.Client) -> None:
    admin = {**fronted.admin_headers(), "content-type": "application/json"}
    cases = [
        public.post("/v1/keys", content=b'{"name": ', headers=admin),
        public.get("/v1/usage", params={"no_such_parameter": "1"}, headers=admin),
        public.post("/v1/keys", json={"name": "x", "requests_per_minute": "many"}, headers=admin),
    ]
    for reply in cases:
        assert reply.status_code == 400, reply.text
        body = reply.json()
        assert body["status"] == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"]
        assert body["request_id"] == reply.headers["x-request-id"]
