"""Seed 002's model stats and GET /v1/usage, end to end: real traffic through the edge,
the ledger's rollups read back through the REST mapping and over gRPC, checked
field by field against the seed's shapes and against the raw events."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import auth, create_key_record, create_project
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hello there"}]
ISO_HOUR = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00\.000Z$")
AGGREGATE_FIELDS = {"totalRequests", "successfulRequests", "failedRequests", "avgLatencyMs", "avgTokensPerRequest"}
POINT_FIELDS = {"timestamp", "requests", "successfulRequests", "avgLatencyMs", "avgTokensPerRequest"}


@dataclass
class Traffic:
    project: str
    other_project: str
    keys: dict[str, tuple[str, str]]  # name -> (secret, key id)
    masked: dict[str, str]  # key id -> masked form as the admin listing shows it
    request_ids: list[str]


def _today(offset_days: int = 0) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset_days)).isoformat()


def _stats(stack: Stack, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(f"{stack.url}/sdk/models/stats", json=body, headers=headers, timeout=10)


def _chat(stack: Stack, secret: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": model, "messages": HI, "max_tokens": 8},
        headers=auth(secret),
        timeout=30,
    )


@pytest.fixture(scope="module")
def traffic(stack: Stack, fake_upstream: FakeOpenAI) -> Iterator[Traffic]:
    fake_upstream.reset()
    project = create_project(stack)
    other_project = create_project(stack)
    keys = {
        "alice": create_key_record(stack, [stack.url], project=project),
        "bob": create_key_record(stack, [stack.url], project=project),
        "eve": create_key_record(stack, [stack.url], project=other_project),
    }
    keys = {name: (secret, key_id) for name, (secret, key_id) in keys.items()}
    listing = httpx.get(f"{stack.url}/v1/keys", headers=stack.admin_headers(), timeout=10).json()
    masked = {k["id"]: k["masked"] for k in listing["keys"]}
    request_ids = []
    plan = [("alice", 3), ("bob", 2), ("eve", 2)]
    for name, count in plan:
        for _ in range(count):
            reply = _chat(stack, keys[name][0], "fake-chat")
            assert reply.status_code == 200, reply.text
            request_ids.append(reply.headers["x-request-id"])
    fake_upstream.fail_next(500, times=20)  # outlasts every retry: one failed request for alice
    failed = _chat(stack, keys["alice"][0], "fake-chat")
    fake_upstream.reset()  # the failures the retries left unused must not reach other tests
    assert failed.status_code == 502, failed.text
    request_ids.append(failed.headers["x-request-id"])
    assert stack.events_per_request(request_ids) == dict.fromkeys(request_ids, 1)
    yield Traffic(project, other_project, keys, masked, request_ids)


def _events(stack: Stack, key_ids: list[str], model: str) -> list[sqlite3.Row]:
    """The raw ledger rows, read straight from the usage database: what the rollups must agree with."""
    with closing(sqlite3.connect(f"file:{stack.data_dir / 'usage.db'}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        marks = ",".join("?" * len(key_ids))
        where = f"key_id IN ({marks}) AND (model = ? OR (model = '' AND model_requested = ?))"
        return list(db.execute(f"SELECT * FROM events WHERE {where}", [*key_ids, model, model]))


def _expected(rows: list[sqlite3.Row]) -> dict[str, Any]:
    n = len(rows)
    ok = sum(1 for r in rows if r["status"] == usage_pb2.STATUS_OK)
    return {
        "totalRequests": n,
        "successfulRequests": ok,
        "failedRequests": n - ok,
        "avgLatencyMs": round(sum(r["latency_ms"] for r in rows) / n, 2),
        "avgTokensPerRequest": round(sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) / n, 2),
    }


def _hourly(rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    by_hour: dict[int, list[sqlite3.Row]] = {}
    for row in rows:
        by_hour.setdefault(row["time_unix_ms"] // 3_600_000 * 3_600_000, []).append(row)
    points = []
    for hour in sorted(by_hour):
        expected = _expected(by_hour[hour])
        points.append(
            {
                "timestamp": dt.datetime.fromtimestamp(hour / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "requests": expected["totalRequests"],
                "successfulRequests": expected["successfulRequests"],
                "avgLatencyMs": expected["avgLatencyMs"],
                "avgTokensPerRequest": expected["avgTokensPerRequest"],
            }
        )
    return points


def test_model_stats_match_the_seed_shape_field_by_field(stack: Stack, traffic: Traffic) -> None:
    alice_secret, alice_id = traffic.keys["alice"]
    _, bob_id = traffic.keys["bob"]
    reply = _stats(stack, {"x-api-key": alice_secret}, startDay=_today(-14), endDay=_today(), modelId="fake-chat")
    assert reply.status_code == 201, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body, list) and len(body) == 1
    result = body[0]
    assert set(result) == {"modelId", "timeRange", "aggregateMetrics", "metricsByApiKey"}
    assert result["modelId"] == "fake-chat"
    assert result["timeRange"] == {"start": _today(-14), "end": _today()}
    # A key sees its own project: alice's and bob's keys, never eve's.
    rows = _events(stack, [alice_id, bob_id], "fake-chat")
    assert len(rows) == 6
    assert result["aggregateMetrics"] == _expected(rows)
    assert result["aggregateMetrics"]["failedRequests"] == 1
    for value in result["aggregateMetrics"].values():
        assert isinstance(value, (int, float)) and not isinstance(value, bool)  # numbers, not strings
    entries = {e["apiKey"]: e for e in result["metricsByApiKey"]}
    assert set(entries) == {traffic.masked[alice_id], traffic.masked[bob_id]}
    for key_id, owned in ((alice_id, True), (bob_id, False)):
        entry = entries[traffic.masked[key_id]]
        assert set(entry) == {"apiKey", "owned", "aggregateMetrics", "timeSeries"}
        assert entry["owned"] is owned
        assert "********" in entry["apiKey"] and key_id not in entry["apiKey"]
        key_rows = [r for r in rows if r["key_id"] == key_id]
        assert entry["aggregateMetrics"] == _expected(key_rows)
        assert set(entry["aggregateMetrics"]) == AGGREGATE_FIELDS
        assert entry["timeSeries"] == _hourly(key_rows)
        for point in entry["timeSeries"]:
            assert set(point) == POINT_FIELDS
            assert ISO_HOUR.match(point["timestamp"])
    # Busiest key first.
    assert result["metricsByApiKey"][0]["apiKey"] == traffic.masked[alice_id]
    # No secret anywhere in the answer.
    for secret, _ in traffic.keys.values():
        assert secret not in reply.text


def test_model_stats_filters_by_api_key_given_as_key_or_id(stack: Stack, traffic: Traffic) -> None:
    alice_secret, _alice_id = traffic.keys["alice"]
    bob_secret, bob_id = traffic.keys["bob"]
    for api_key in (bob_secret, bob_id):
        body = _stats(
            stack, auth(alice_secret), startDay=_today(-1), endDay=_today(), modelId="fake-chat", apiKey=api_key
        ).json()
        assert len(body) == 1
        assert [e["apiKey"] for e in body[0]["metricsByApiKey"]] == [traffic.masked[bob_id]]
        assert body[0]["metricsByApiKey"][0]["owned"] is False
        assert body[0]["aggregateMetrics"]["totalRequests"] == 2
    # A key of another project is not visible through the filter: nothing matches.
    _, eve_id = traffic.keys["eve"]
    reply = _stats(stack, auth(alice_secret), startDay=_today(), endDay=_today(), modelId="fake-chat", apiKey=eve_id)
    assert (reply.status_code, reply.json()) == (201, [])


def test_admin_sees_every_key_and_owns_none(stack: Stack, traffic: Traffic) -> None:
    body = _stats(stack, stack.admin_headers(), startDay=_today(), endDay=_today(), modelId="fake-chat").json()
    entries = {e["apiKey"]: e for e in body[0]["metricsByApiKey"]}
    for _, key_id in traffic.keys.values():
        assert traffic.masked[key_id] in entries
    assert not any(e["owned"] for e in entries.values())
    eve = entries[traffic.masked[traffic.keys["eve"][1]]]
    assert eve["aggregateMetrics"]["totalRequests"] == 2


def test_model_stats_empty_is_201_with_an_empty_array(stack: Stack, traffic: Traffic) -> None:
    secret = traffic.keys["alice"][0]
    for body in (
        {"startDay": _today(-3), "endDay": _today(), "modelId": "demo-embed"},  # no usage of this model
        {"startDay": _today(-31), "endDay": _today(-20), "modelId": "fake-chat"},  # no usage in these days
        {"startDay": _today(), "endDay": _today(), "modelId": "no-such-model"},
    ):
        reply = _stats(stack, {"x-api-key": secret}, **body)
        assert reply.status_code == 201, reply.text
        assert reply.json() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"startDay": _today(-32), "endDay": _today(), "modelId": "fake-chat"}, "startDay"),
        ({"startDay": _today(), "endDay": _today(-1), "modelId": "fake-chat"}, "endDay"),
        ({"startDay": "2026-13-01", "endDay": _today(), "modelId": "fake-chat"}, "startDay"),
        ({"startDay": "yesterday", "endDay": _today(), "modelId": "fake-chat"}, "startDay"),
        ({"startDay": _today(), "endDay": "2026/01/01", "modelId": "fake-chat"}, "endDay"),
        ({"endDay": _today(), "modelId": "fake-chat"}, "startDay"),
        ({"startDay": _today(), "modelId": "fake-chat"}, "endDay"),
        ({"startDay": _today(), "endDay": _today()}, "modelId"),
        ({"startDay": _today(), "endDay": _today(), "modelId": "fake-chat", "bogus": 1}, None),
        ({"startDay": 20260101, "endDay": _today(), "modelId": "fake-chat"}, None),
    ],
)
def test_model_stats_rejects_bad_requests_with_400(
    stack: Stack, traffic: Traffic, body: dict[str, Any], param: str | None
) -> None:
    reply = _stats(stack, auth(traffic.keys["alice"][0]), **body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_model_stats_needs_a_valid_key(stack: Stack, traffic: Traffic) -> None:
    body = {"startDay": _today(), "endDay": _today(), "modelId": "fake-chat"}
    assert _stats(stack, {}, **body).status_code == 401
    assert _stats(stack, {"x-api-key": "il-not-a-key"}, **body).status_code == 401
    reply = httpx.post(f"{stack.url}/sdk/models/stats", content=b"{not json", headers=auth(traffic.keys["alice"][0]))
    assert reply.status_code == 400


def test_model_stats_over_grpc(stack: Stack, traffic: Traffic) -> None:
    alice_secret, alice_id = traffic.keys["alice"]
    with grpc.insecure_channel(stack.service_addr("usage")) as channel:
        stub = usage_pb2_grpc.ModelStatsServiceStub(channel)
        reply = stub.GetModelStats(
            usage_pb2.GetModelStatsRequest(start_day=_today(), end_day=_today(), model_id="fake-chat"),
            metadata=[("authorization", f"Bearer {alice_secret}")],
            timeout=10,
        )
        assert reply.results[0].aggregate_metrics.total_requests == 6
        owned = [e for e in reply.results[0].metrics_by_api_key if e.owned]
        assert [e.api_key for e in owned] == [traffic.masked[alice_id]]
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelStats(usage_pb2.GetModelStatsRequest(model_id="fake-chat"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _usage(stack: Stack, headers: dict[str, str], path: str = "/v1/usage", **params: Any) -> httpx.Response:
    return httpx.get(f"{stack.url}{path}", params=params, headers=headers, timeout=10)


def test_usage_groups_by_key_and_model_within_the_callers_project(stack: Stack, traffic: Traffic) -> None:
    alice_secret, alice_id = traffic.keys["alice"]
    _, bob_id = traffic.keys["bob"]
    reply = _usage(stack, auth(alice_secret), group_by=["key", "model"])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["end_day"] == _today() and body["start_day"] == _today(-29)
    rows = {(r["key_id"], r["model"]): r for r in body["rows"]}
    assert set(rows) == {(alice_id, "fake-chat"), (bob_id, "fake-chat")}
    alice = rows[(alice_id, "fake-chat")]
    raw = _events(stack, [alice_id], "fake-chat")
    assert alice["key_masked"] == traffic.masked[alice_id]
    assert alice["project"] == ""  # not grouped by project
    assert (alice["requests"], alice["successful_requests"], alice["failed_requests"]) == ("4", "3", "1")
    assert int(alice["prompt_tokens"]) == sum(r["prompt_tokens"] for r in raw)
    assert int(alice["completion_tokens"]) == sum(r["completion_tokens"] for r in raw)
    assert alice["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in raw))
    assert alice["avg_latency_ms"] == round(sum(r["latency_ms"] for r in raw) / 4, 2)
    # Another project's filter is refused; the admin key sees every project.
    forbidden = _usage(stack, auth(alice_secret), project=traffic.other_project)
    assert forbidden.status_code == 403, forbidden.text
    everything = _usage(stack, stack.admin_headers(), group_by=["project", "day"]).json()["rows"]
    projects = {r["project"]: r for r in everything}
    assert projects[traffic.project]["requests"] == "6"
    assert projects[traffic.other_project]["requests"] == "2"
    assert all(r["day"] == _today() for r in everything)


def test_usage_groups_by_provider_and_hour(stack: Stack, traffic: Traffic) -> None:
    body = _usage(stack, stack.admin_headers(), group_by=["provider", "hour"], project=traffic.project).json()
    assert {r["provider"] for r in body["rows"]} == {"fake"}
    assert sum(int(r["requests"]) for r in body["rows"]) == 6
    assert all(ISO_HOUR.match(r["hour"]) for r in body["rows"])


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "color"}, "group_by"),
        ({"group_by": ["key", "key"]}, "group_by"),
        ({"start_day": "2026-02-30"}, "start_day"),
        ({"start_day": _today(), "end_day": _today(-1)}, "end_day"),
        ({"start_day": "2020-01-01", "end_day": _today()}, "start_day"),
        ({"bogus": "1"}, "bogus"),
    ],
)
def test_usage_rejects_bad_queries(stack: Stack, params: dict[str, Any], param: str) -> None:
    reply = _usage(stack, stack.admin_headers(), **params)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_usage_csv_export_matches_the_json(stack: Stack, traffic: Traffic) -> None:
    secret = traffic.keys["bob"][0]
    reply = _usage(stack, auth(secret), path="/v1/usage/export", group_by=["key", "day"])
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/csv; charset=utf-8"
    lines = reply.text.strip().split("\r\n")
    header = lines[0].split(",")
    assert header[:3] == ["key_id", "key_masked", "project"]
    json_rows = _usage(stack, auth(secret), group_by=["key", "day"]).json()["rows"]
    assert len(lines) == 1 + len(json_rows) == 3
    for line, row in zip(lines[1:], json_rows, strict=True):
        cells = dict(zip(header, line.split(","), strict=True))
        assert cells["key_id"] == row["key_id"]
        assert cells["requests"] == row["requests"]
        assert cells["day"] == _today()
    assert _usage(stack, {}, path="/v1/usage/export").status_code == 401
