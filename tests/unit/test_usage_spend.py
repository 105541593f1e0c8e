"""Spend sums per key and project: the SQLite store on a real file, and the servicer's GetSpend on top."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest

from interlock.usage.v1 import usage_pb2 as pb
from services.common.errors import InvalidRequestError
from services.usage.servicer import UsageServicer
from services.usage.store import SpendTotal
from services.usage.store.sqlite import _SPEND, MIGRATIONS, SqliteEventStore

PERIOD_MS = 1_700_000_000_000  # the period start, in ms


def event(rid: str, key: str, project: str, time_ms: int, cost: float) -> pb.UsageEvent:
    return pb.UsageEvent(request_id=rid, key_id=key, project=project, time_unix_ms=time_ms, cost_usd=cost)


# Costs are binary fractions, so every sum below is exact.
EVENTS = [
    event("a1", "key_a", "alpha", PERIOD_MS - 86_400_000, 1.0),
    event("a2", "key_a", "alpha", PERIOD_MS - 1, 0.5),  # the last ms before the period
    event("a3", "key_a", "alpha", PERIOD_MS, 0.25),  # the period's first ms counts
    event("b1", "key_b", "alpha", PERIOD_MS + 5_000, 2.0),
    event("c1", "key_c", "beta", PERIOD_MS - 10, 4.0),
    event("c2", "key_c", "beta", PERIOD_MS + 10, 0.0),  # a failed call: no cost, still a row
    event("d1", "key_d", "", PERIOD_MS + 1, 8.0),  # a key outside any project
    event("n1", "", "", PERIOD_MS + 1, 16.0),  # anonymous
    event("n2", "", "gamma", PERIOD_MS - 1, 32.0),  # no key, but a project
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteEventStore]:
    opened = SqliteEventStore(tmp_path / "usage.db")
    assert opened.insert(EVENTS) == (len(EVENTS), 0)
    yield opened
    opened.close()


def as_dict(totals: list[SpendTotal]) -> dict[str, tuple[float, float]]:
    by_id = {t.id: (t.total_usd, t.period_usd) for t in totals}
    assert len(by_id) == len(totals), "one row per id"
    return by_id


def test_sums_per_key_and_project_in_all_and_in_the_period(store: SqliteEventStore) -> None:
    totals = store.spend(PERIOD_MS)
    assert as_dict(totals.keys) == {
        "key_a": (1.75, 0.25),
        "key_b": (2.0, 2.0),
        "key_c": (4.0, 0.0),
        "key_d": (8.0, 8.0),
    }
    assert as_dict(totals.projects) == {
        "alpha": (3.75, 2.25),
        "beta": (4.0, 0.0),
        "gamma": (32.0, 0.0),
    }
    for row in totals.keys + totals.projects:
        assert isinstance(row.total_usd, float) and isinstance(row.period_usd, float)


def test_period_start_moves_only_the_period_sums(store: SqliteEventStore) -> None:
    everything = store.spend(0)
    assert all(t.period_usd == t.total_usd for t in everything.keys + everything.projects)
    nothing = store.spend(2**63 - 1)
    assert all(t.period_usd == 0.0 for t in nothing.keys + nothing.projects)
    assert as_dict(nothing.keys).keys() == as_dict(everything.keys).keys() == {"key_a", "key_b", "key_c", "key_d"}
    assert as_dict(store.spend(PERIOD_MS - 1).keys)["key_a"] == (1.75, 0.75)


def test_duplicates_are_counted_once_and_new_events_show(store: SqliteEventStore) -> None:
    assert store.insert([EVENTS[0], event("a4", "key_a", "alpha", PERIOD_MS + 1, 0.125)]) == (1, 1)
    totals = store.spend(PERIOD_MS)
    assert as_dict(totals.keys)["key_a"] == (1.875, 0.375)
    assert as_dict(totals.projects)["alpha"] == (3.875, 2.375)


def test_empty_ledger_has_no_rows(tmp_path: Path) -> None:
    with closing(SqliteEventStore(tmp_path / "empty.db")) as empty:
        totals = empty.spend(PERIOD_MS)
    assert totals.keys == [] and totals.projects == []


def test_survives_reopening_the_file(store: SqliteEventStore, tmp_path: Path) -> None:
    before = store.spend(PERIOD_MS)
    store.close()
    with closing(SqliteEventStore(tmp_path / "usage.db")) as again:
        assert again.spend(PERIOD_MS) == before


def test_reads_only_covering_indexes(store: SqliteEventStore, tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {_SPEND}", {"since": PERIOD_MS})]
    steps = [step for step in plan if "events" in step]
    assert steps == [
        "SEARCH events USING COVERING INDEX events_key_spend (key_id>?)",
        "SEARCH events USING COVERING INDEX events_project_spend (project>?)",
    ], plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # groups stream out of the index order


def test_ledger_from_before_spend_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in MIGRATIONS[:3]:  # the schema before GetSpend
            db.execute(statement)
        db.execute("PRAGMA user_version = 3")
    with closing(SqliteEventStore(path)) as migrated:
        migrated.insert(EVENTS[:2])  # migrates, then writes
    with closing(sqlite3.connect(path)) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    assert {"events_model_time", "events_key_spend", "events_project_spend"} <= indexes
    assert "events_key_time" not in indexes  # replaced by events_key_spend
    assert version == len(MIGRATIONS)
    with closing(SqliteEventStore(path)) as reopened:
        assert as_dict(reopened.spend(PERIOD_MS).keys) == {"key_a": (1.5, 0.0)}
        assert reopened.count(pb.CountEventsRequest(key_id="key_a")) == 2


async def test_servicer_maps_sums_to_the_response(store: SqliteEventStore) -> None:
    # GetSpend is internal: no caller is resolved and no report is read.
    servicer = UsageServicer(store, cast(Any, None), cast(Any, None))
    context = cast(Any, None)
    reply = await servicer.GetSpend(pb.GetSpendRequest(period_start_unix=PERIOD_MS // 1000), context)
    assert {s.id: (s.total_usd, s.period_usd) for s in reply.keys} == as_dict(store.spend(PERIOD_MS).keys)
    assert {s.id: (s.total_usd, s.period_usd) for s in reply.projects} == {
        "alpha": (3.75, 2.25),
        "beta": (4.0, 0.0),
        "gamma": (32.0, 0.0),
    }
    # Far past what milliseconds in an int64 can hold: a period with nothing in it, not an overflow.
    late = await servicer.GetSpend(pb.GetSpendRequest(period_start_unix=2**63 - 1), context)
    assert [s.period_usd for s in late.keys] == [0.0] * 4
    assert sum(s.total_usd for s in late.keys) == 15.75
    with pytest.raises(InvalidRequestError) as invalid:
        await servicer.GetSpend(pb.GetSpendRequest(period_start_unix=-1), context)
    assert invalid.value.param == "period_start_unix"
