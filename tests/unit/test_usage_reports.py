"""The report logic over a real SQLite ledger with an injected clock: scoping by caller,
date validation at the 31-day edge, the seed's rounding and the CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.usage.v1 import usage_pb2 as pb
from services.common import keys
from services.common.clock import ManualClock
from services.common.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from services.usage.callers import ADMIN, Caller, CallerResolver
from services.usage.reports import Reports, iso_hour
from services.usage.store.sqlite import SqliteEventStore

PEPPER = b"pepper"
ADMIN_SECRET = "il-admin-secret"
# 2026-11-22T10:30:00Z
NOW = dt.datetime(2026, 11, 22, 10, 30, tzinfo=dt.UTC).timestamp()
HOUR_MS = 3_600_000
TODAY_MS = int(dt.datetime(2026, 11, 22, tzinfo=dt.UTC).timestamp() * 1000)


def _key(key_id: str, project: str, secret: str, **extra: Any) -> cpb.ApiKey:
    return cpb.ApiKey(
        id=key_id,
        project=project,
        secret_hash=keys.hash_secret(secret, PEPPER),
        masked=keys.mask(secret),
        **extra,
    )


KEYS = {
    "alpha-one": _key("key_a1", "alpha", "il-aaaa-alpha-one-0001"),
    "alpha-two": _key("key_a2", "alpha", "il-bbbb-alpha-two-0002"),
    "beta": _key("key_b", "beta", "il-cccc-beta-key-0003"),
    "loner": _key("key_l", "", "il-dddd-loner-key-0004"),
    "revoked": _key("key_r", "alpha", "il-eeee-revoked-k-0005", revoked=True),
    "expired": _key("key_x", "alpha", "il-ffff-expired-k-0006", expires_at=int(NOW) - 1),
}
SECRETS = {
    "alpha-one": "il-aaaa-alpha-one-0001",
    "alpha-two": "il-bbbb-alpha-two-0002",
    "beta": "il-cccc-beta-key-0003",
    "loner": "il-dddd-loner-key-0004",
    "revoked": "il-eeee-revoked-k-0005",
    "expired": "il-ffff-expired-k-0006",
}


def _event(rid: str, key: str, project: str, hour: int, *, ok: bool = True, **fields: Any) -> pb.UsageEvent:
    base: dict[str, Any] = {
        "model": "m1",
        "provider": "p1",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 100,
        "cost_usd": 0.5,
    }
    base.update(fields)
    return pb.UsageEvent(
        request_id=rid,
        key_id=key,
        project=project,
        time_unix_ms=TODAY_MS + hour * HOUR_MS + 1000,
        status=pb.STATUS_OK if ok else pb.STATUS_ERROR,
        **base,
    )


EVENTS = [
    _event("1", "key_a1", "alpha", 8),
    _event("2", "key_a1", "alpha", 8, ok=False, prompt_tokens=0, completion_tokens=0, latency_ms=1),
    _event("3", "key_a1", "alpha", 9, latency_ms=203, completion_tokens=8),
    _event("4", "key_a2", "alpha", 9, ttft_ms=40, stream=True),
    _event("5", "key_b", "beta", 9),
    _event("6", "key_l", "", 9, model="", model_requested="m1"),  # failed before a model answered
    _event("7", "key_a1", "alpha", 9, model="m2", provider="p2"),
    _event("8", "", "", 9),  # anonymous: totals only
]


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[tuple[Reports, CallerResolver]]:
    store = SqliteEventStore(tmp_path / "usage.db")
    store.insert(EVENTS)
    cache = SimpleNamespace(keys_by_hash={k.secret_hash: k for k in KEYS.values()})
    callers = CallerResolver(cast(Any, cache), PEPPER, keys.hash_secret(ADMIN_SECRET, PEPPER), ManualClock(NOW))
    yield Reports(store, callers, ManualClock(NOW)), callers
    store.close()


def _caller(callers: CallerResolver, name: str) -> Caller:
    return callers.resolve([("authorization", f"Bearer {SECRETS[name]}")])


def _stats(start: str = "2026-11-22", end: str = "2026-11-22", **fields: Any) -> pb.GetModelStatsRequest:
    return pb.GetModelStatsRequest(start_day=start, end_day=end, model_id=fields.pop("model_id", "m1"), **fields)


def test_callers_admin_key_and_refusals(reports: tuple[Reports, CallerResolver]) -> None:
    _, callers = reports
    assert callers.resolve([("x-api-key", ADMIN_SECRET)]) is ADMIN
    assert _caller(callers, "beta").key == KEYS["beta"]
    for metadata in ([], [("x-api-key", "il-unknown")], [("authorization", "Basic abc")]):
        with pytest.raises(AuthenticationError):
            callers.resolve(metadata)
    for name in ("revoked", "expired"):
        with pytest.raises(AuthenticationError):
            _caller(callers, name)


async def test_stats_for_a_key_cover_its_project_with_the_seeds_rounding(
    reports: tuple[Reports, CallerResolver],
) -> None:
    report, callers = reports
    reply = await report.model_stats(_caller(callers, "alpha-two"), _stats())
    (result,) = reply.results
    # alpha's m1 events: 1, 2, 3, 4.
    assert (result.aggregate_metrics.total_requests, result.aggregate_metrics.successful_requests) == (4, 3)
    assert result.aggregate_metrics.failed_requests == 1
    assert result.aggregate_metrics.avg_latency_ms == round((100 + 1 + 203 + 100) / 4, 2)
    assert result.aggregate_metrics.avg_tokens_per_request == round((15 + 0 + 18 + 15) / 4, 2)
    by_key = {e.api_key: e for e in result.metrics_by_api_key}
    assert set(by_key) == {KEYS["alpha-one"].masked, KEYS["alpha-two"].masked}
    assert by_key[KEYS["alpha-two"].masked].owned and not by_key[KEYS["alpha-one"].masked].owned
    series = by_key[KEYS["alpha-one"].masked].time_series
    assert [p.timestamp for p in series] == [iso_hour(TODAY_MS + 8 * HOUR_MS), iso_hour(TODAY_MS + 9 * HOUR_MS)]
    assert [(p.requests, p.successful_requests) for p in series] == [(2, 1), (1, 1)]
    assert series[0].avg_latency_ms == 50.5
    # Busiest key first.
    assert result.metrics_by_api_key[0].api_key == KEYS["alpha-one"].masked


async def test_admin_totals_include_anonymous_traffic_but_list_only_keys(
    reports: tuple[Reports, CallerResolver],
) -> None:
    report, _ = reports
    (result,) = (await report.model_stats(ADMIN, _stats())).results
    # Every m1 event, the failed-before-routing one (model_requested) and the anonymous one included.
    assert result.aggregate_metrics.total_requests == 7
    assert {e.api_key for e in result.metrics_by_api_key} == {
        KEYS[n].masked for n in ("alpha-one", "alpha-two", "beta", "loner")
    }
    assert not any(e.owned for e in result.metrics_by_api_key)


async def test_a_key_without_a_project_sees_only_itself(reports: tuple[Reports, CallerResolver]) -> None:
    report, callers = reports
    loner = _caller(callers, "loner")
    (result,) = (await report.model_stats(loner, _stats())).results
    assert [e.api_key for e in result.metrics_by_api_key] == [KEYS["loner"].masked]
    rows = (await report.query_usage(loner, pb.QueryUsageRequest(group_by=["key"]))).rows
    assert [(r.key_id, r.requests) for r in rows] == [("key_l", 1)]
    with pytest.raises(PermissionDeniedError):
        await report.query_usage(loner, pb.QueryUsageRequest(key_id="key_a1"))


@pytest.mark.parametrize(
    ("start", "end", "ok"),
    [
        ("2026-10-22", "2026-11-22", True),  # exactly 31 days back
        ("2026-10-21", "2026-11-22", False),  # 32
        ("2026-11-22", "2026-11-21", False),
        ("2026-11-22", "2026-12-31", True),  # a future end is fine
    ],
)
async def test_stats_day_range_rules(reports: tuple[Reports, CallerResolver], start: str, end: str, ok: bool) -> None:
    report, _ = reports
    if ok:
        assert len((await report.model_stats(ADMIN, _stats(start, end))).results) == 1
    else:
        with pytest.raises(InvalidRequestError):
            await report.model_stats(ADMIN, _stats(start, end))


async def test_stats_filter_by_unknown_key_matches_nothing(reports: tuple[Reports, CallerResolver]) -> None:
    report, callers = reports
    assert not (await report.model_stats(ADMIN, _stats(api_key="il-nobody"))).results
    assert not (await report.model_stats(_caller(callers, "beta"), _stats(api_key="key_a1"))).results
    only = (await report.model_stats(ADMIN, _stats(api_key=SECRETS["beta"]))).results
    assert [e.api_key for e in only[0].metrics_by_api_key] == [KEYS["beta"].masked]


async def test_usage_rows_and_csv(reports: tuple[Reports, CallerResolver]) -> None:
    report, callers = reports
    response = await report.query_usage(
        _caller(callers, "alpha-one"), pb.QueryUsageRequest(group_by=["model", "provider", "day"])
    )
    assert [(r.model, r.provider, r.day, r.requests) for r in response.rows] == [
        ("m1", "p1", "2026-11-22", 4),
        ("m2", "p2", "2026-11-22", 1),
    ]
    assert (response.start_day, response.end_day) == ("2026-10-24", "2026-11-22")
    m1 = response.rows[0]
    assert m1.avg_ttft_ms == 40.0  # the one stream
    assert m1.cost_usd == 2.0
    table = list(csv.DictReader(io.StringIO(Reports.to_csv(response).decode())))
    assert [(r["model"], r["requests"], r["day"]) for r in table] == [
        ("m1", "4", "2026-11-22"),
        ("m2", "1", "2026-11-22"),
    ]


async def test_csv_cells_that_look_like_formulas_are_neutralised(
    reports: tuple[Reports, CallerResolver],
) -> None:
    report, _ = reports
    report._store.insert([_event("f", "key_a1", "alpha", 9, model="=HYPERLINK(1)", provider="-1")])
    response = await report.query_usage(ADMIN, pb.QueryUsageRequest(group_by=["model", "provider"]))
    text = Reports.to_csv(response).decode()
    assert "'=HYPERLINK(1)" in text
    assert ",-1," in text  # a negative-looking number stays a number
