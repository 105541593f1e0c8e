"""The usage ledger's stores: one contract suite run on SQLite (a file under tmp_path) and
on the real PostgreSQL server (a fresh schema per test), then what is particular to each:
SQLite's in-place migration of an old ledger, PostgreSQL's behaviour when its connection
dies or stalls. Rollup answers are checked against sums computed here from the raw events."""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interlock.usage.v1 import usage_pb2 as pb
from services.common.errors import to_status
from services.usage.settings import UsageSettings
from services.usage.store import DIMENSIONS, AggregateQuery, AggregateRow, EventStore, LedgerUnavailableError
from services.usage.store import sqlite as sqlite_store
from services.usage.store.open import open_store
from services.usage.store.postgres import PostgresEventStore
from services.usage.store.rollup import aggregate_sql
from services.usage.store.sqlite import SqliteEventStore
from tests.support.keystore import PG_URL
from tests.support.stack import free_port

HOUR = 3_600_000
DAY = 86_400_000
T0 = 19_676 * DAY  # a UTC midnight (2023-11-15)
EVERYTHING = AggregateQuery(start_ms=0, end_ms=2**62)

Opener = Callable[[], EventStore]


def ev(rid: str, t: int = T0, **fields: object) -> pb.UsageEvent:
    values: dict[str, object] = {"key_id": "k1", "project": "p1", "model": "m1", "provider": "pa",
                                 "status": pb.STATUS_OK, "latency_ms": 100, "prompt_tokens": 10,
                                 "completion_tokens": 5, "cost_usd": 0.5}  # fmt: skip
    values.update(fields)
    return pb.UsageEvent(request_id=rid, time_unix_ms=t, **values)  # type: ignore[arg-type]


def random_events(count: int, seed: int = 7) -> list[pb.UsageEvent]:
    """Events over three days; costs are multiples of 1/8, so every sum is exact in any order."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        answered = rng.random() < 0.85
        ttft = rng.choice([0, 0, rng.randint(1, 900)])
        events.append(
            pb.UsageEvent(
                request_id=f"r{n}", time_unix_ms=T0 + rng.randrange(3 * DAY), key_id=rng.choice(["key-B", "key-a", ""]),
                project=rng.choice(["p1", "p2"]), model=rng.choice(["m1", "m2"]) if answered else "",
                model_requested=rng.choice(["m1", "m3", "router:fast"]), provider=rng.choice(["pa", "pb"]),
                status=rng.choice([pb.STATUS_OK] * 4 + [pb.STATUS_ERROR, pb.STATUS_CANCELLED]),
                latency_ms=rng.randint(1, 5000), prompt_tokens=rng.randint(0, 900),
                completion_tokens=rng.randint(0, 400), cached_tokens=rng.randint(0, 50),
                cost_usd=rng.randint(0, 40) / 8, ttft_ms=ttft, stream=ttft > 0,
            )
        )  # fmt: skip
    return events


def reference(events: Sequence[pb.UsageEvent], q: AggregateQuery) -> list[AggregateRow]:
    """What aggregate() must answer, summed straight from the events (first of each request id)."""
    groups: dict[tuple[object, ...], AggregateRow] = {}
    seen: set[str] = set()
    for e in events:
        if e.request_id in seen:
            continue
        seen.add(e.request_id)
        hour, model = e.time_unix_ms // HOUR * HOUR, e.model or e.model_requested
        wanted = {"key_id": e.key_id, "project": e.project, "model": model, "provider": e.provider}
        if not q.start_ms <= hour < q.end_ms or any(getattr(q, f) not in ("", v) for f, v in wanted.items()):
            continue
        values = {"key": e.key_id, "project": e.project, "model": model, "provider": e.provider,
                  "day": e.time_unix_ms // DAY * DAY, "hour": hour}  # fmt: skip
        dims = {d: values[d] for d in q.group_by}
        row = groups.setdefault(tuple(dims.values()), AggregateRow(dims=dims))
        ok = e.status == pb.STATUS_OK
        row.requests += 1
        row.successful += ok
        row.failed += not ok
        row.latency_ms_sum += e.latency_ms
        row.prompt_tokens += e.prompt_tokens
        row.completion_tokens += e.completion_tokens
        row.cached_tokens += e.cached_tokens
        row.cost_usd += e.cost_usd
        row.ttft_ms_sum += e.ttft_ms if e.ttft_ms > 0 else 0
        row.ttft_count += e.ttft_ms > 0
    return [groups[k] for k in sorted(groups)]  # type: ignore[type-var]


@pytest.fixture
def pg_url(admin: psycopg.Connection, pg_schema: str) -> str:
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
    return make_conninfo(PG_URL, options=f"-c search_path={pg_schema}")


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test, each time on the same database; closes them all afterwards."""
    opened: list[EventStore] = []
    if request.param == "sqlite":

        def make() -> EventStore:
            return SqliteEventStore(tmp_path / "usage.db")
    else:
        url = request.getfixturevalue("pg_url")

        def make() -> EventStore:
            return PostgresEventStore(url)

    def open_one() -> EventStore:
        opened.append(make())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Opener) -> EventStore:
    return opener()


# -- the contract, on both stores -------------------------------------------------------------


def test_insert_is_idempotent_and_rollups_count_each_event_once(store: EventStore) -> None:
    # The same id twice in one batch: the first is stored, the second is a duplicate.
    batch = [ev("a", cost_usd=1.0), ev("b"), ev("a", cost_usd=64.0, prompt_tokens=999)]
    assert store.insert(batch) == (2, 1)
    assert store.insert([ev("a"), ev("c", T0 + HOUR), ev("b")]) == (1, 2)  # across batches
    assert store.insert(batch) == (0, 3)
    assert store.insert([]) == (0, 0)
    everything = [*batch, ev("c", T0 + HOUR)]
    [total] = store.aggregate(EVERYTHING)
    assert total == AggregateRow({}, requests=3, successful=3, latency_ms_sum=300, prompt_tokens=30,
                                 completion_tokens=15, cost_usd=2.0)  # fmt: skip
    assert store.aggregate(replace(EVERYTHING, group_by=("hour",))) == reference(everything, replace(
        EVERYTHING, group_by=("hour",)))  # fmt: skip
    assert store.count(pb.CountEventsRequest()) == 3


def test_every_grouping_matches_the_raw_events(store: EventStore) -> None:
    events = random_events(400)
    # Overlapping batches: replays must not count twice.
    for start in range(0, 400, 90):
        store.insert(events[max(0, start - 20) : start + 90])
    assert store.count(pb.CountEventsRequest()) == 400
    for size in range(len(DIMENSIONS) + 1):
        for dims in itertools.permutations(DIMENSIONS, size) if size <= 2 else itertools.combinations(DIMENSIONS, size):
            q = replace(EVERYTHING, group_by=dims)
            rows = store.aggregate(q)
            assert rows == reference(events, q), dims
            assert rows, dims


def test_filters_match_exactly_and_combine(store: EventStore) -> None:
    events = random_events(300, seed=11)
    store.insert(events)
    filters = {"key_id": ["key-a", "key-B", ""], "project": ["p2", ""], "model": ["m1", "m3", "router:fast", ""],
               "provider": ["pb", ""]}  # fmt: skip
    for key_id, project, model, provider in itertools.product(*filters.values()):
        q = AggregateQuery(T0, T0 + 2 * DAY, ("model", "day"), key_id, project, model, provider)
        assert store.aggregate(q) == reference(events, q), q
    assert store.aggregate(replace(EVERYTHING, model="nobody", group_by=("key",))) == []
    assert store.aggregate(replace(EVERYTHING, model="m")) == []  # exact, not a prefix


def test_hours_and_days_are_utc_buckets_and_the_window_is_half_open(store: EventStore) -> None:
    store.insert([ev("a", T0 - 1), ev("b", T0), ev("c", T0 + HOUR - 1), ev("d", T0 + HOUR), ev("e", T0 + DAY - 1),
                  ev("f", T0 + DAY)])  # fmt: skip
    by_hour = store.aggregate(replace(EVERYTHING, group_by=("hour",)))
    assert [(r.dims["hour"], r.requests) for r in by_hour] == [
        (T0 - HOUR, 1), (T0, 2), (T0 + HOUR, 1), (T0 + DAY - HOUR, 1), (T0 + DAY, 1)]  # fmt: skip
    by_day = store.aggregate(replace(EVERYTHING, group_by=("day",)))
    assert [(r.dims["day"], r.requests) for r in by_day] == [(T0 - DAY, 1), (T0, 4), (T0 + DAY, 1)]
    assert all(isinstance(r.dims["day"], int) for r in by_day)

    def requests(start: int, end: int) -> int:
        return sum(r.requests for r in store.aggregate(AggregateQuery(start, end)))

    # The window selects whole hours: an hour counts when its start is in [start, end).
    assert requests(T0, T0 + DAY) == 4
    assert requests(T0, T0 + HOUR) == 2
    assert requests(T0 + 1, T0 + HOUR + 1) == 1  # hour T0 starts before the window
    assert requests(T0, T0) == 0


def test_model_falls_back_to_the_model_asked_for(store: EventStore) -> None:
    store.insert([ev("a", model="m1", model_requested="router:fast"), ev("b", model="", model_requested="m9",
                  status=pb.STATUS_ERROR), ev("c", model="", model_requested="m1")])  # fmt: skip
    rows = store.aggregate(replace(EVERYTHING, group_by=("model",)))
    assert [(r.dims["model"], r.requests, r.failed) for r in rows] == [("m1", 2, 0), ("m9", 1, 1)]
    assert store.aggregate(replace(EVERYTHING, model="router:fast")) == []
    assert store.count(pb.CountEventsRequest(model="m1")) == 1  # count() still reads the events' own model


def test_outcomes_and_time_to_first_token_inputs(store: EventStore) -> None:
    store.insert([
        ev("ok", ttft_ms=120, stream=True), ev("ok2", ttft_ms=80, stream=True), ev("plain"),
        ev("err", status=pb.STATUS_ERROR, prompt_tokens=0, completion_tokens=0, cost_usd=0),
        ev("gone", status=pb.STATUS_CANCELLED, ttft_ms=40, stream=True), ev("unknown", status=pb.STATUS_UNSPECIFIED),
    ])  # fmt: skip
    [row] = store.aggregate(EVERYTHING)
    assert (row.requests, row.successful, row.failed) == (6, 3, 3)
    assert (row.ttft_ms_sum, row.ttft_count) == (240, 3)  # non-streams are not in the average
    assert row.cost_usd == 2.5 and isinstance(row.cost_usd, float)
    for grouped in store.aggregate(replace(EVERYTHING, group_by=("day", "key"))):
        values = list(vars(grouped).values())[1:]
        # Not PostgreSQL's Decimal; the last three are the merged score sums.
        assert [type(v) for v in values] == [int] * 7 + [float] + [int] * 2 + [float, int, int]
        assert [type(v) for v in grouped.dims.values()] == [int, str]


def score(rid: str, evaluator: str, value: float, **fields: object) -> pb.QualityScore:
    values: dict[str, object] = {"key_id": "k1", "project": "p1", "model": "m1", "provider": "pa",
                                 "source": pb.SCORE_SOURCE_EVALUATOR, "request_time_unix_ms": T0}  # fmt: skip
    values.update(fields)
    return pb.QualityScore(request_id=rid, evaluator=evaluator, score=value, **values)  # type: ignore[arg-type]


def test_scores_upsert_and_merge_into_their_groups(store: EventStore) -> None:
    store.insert([ev("a"), ev("b"), ev("c", model="m2")])
    batch = [
        score("a", "json", 1.0),
        score("a", "judge", 0.5),
        score("b", "json", 0.0),
        score("c", "json", 1.0, model="m2"),
    ]
    assert store.insert_scores(batch) == 4
    # A replay rewrites the same rows; a changed feedback replaces the earlier one; errors are not averaged.
    store.insert_scores([*batch, score("b", "judge", 0.9, error=True)])
    store.insert_scores([score("b", "feedback", 0.0, source=pb.SCORE_SOURCE_FEEDBACK)])
    store.insert_scores([score("b", "feedback", 1.0, source=pb.SCORE_SOURCE_FEEDBACK)])
    rows = {r.dims["model"]: r for r in store.aggregate(replace(EVERYTHING, group_by=("model",)))}
    assert (rows["m1"].scored_requests, rows["m1"].score_count, rows["m1"].score_sum) == (2, 4, 2.5)
    assert (rows["m2"].scored_requests, rows["m2"].score_count, rows["m2"].score_sum) == (1, 1, 1.0)
    [total] = store.aggregate(EVERYTHING)
    assert (total.requests, total.scored_requests, total.score_count) == (3, 3, 5)
    # Scores of a request whose event is not stored yet wait for it, out of every row.
    store.insert_scores([score("late", "json", 1.0, model="m3")])
    assert [r.dims["model"] for r in store.aggregate(replace(EVERYTHING, group_by=("model",)))] == ["m1", "m2"]


def test_find_event_gives_the_owner_and_model(store: EventStore) -> None:
    store.insert([ev("a", key_id="k7", project="p7", model="", model_requested="router:fast")])
    found = store.find_event("a")
    assert found is not None
    assert (found.key_id, found.project, found.model_requested, found.time_unix_ms) == ("k7", "p7", "router:fast", T0)
    assert store.find_event("nope") is None


def test_spend_and_count_are_unchanged(store: EventStore) -> None:
    store.insert([ev("a", key_id="ka", project="pa", cost_usd=1.0), ev("b", T0 + DAY, key_id="ka", cost_usd=0.25),
                  ev("c", key_id="", project="", cost_usd=8.0), ev("a", cost_usd=100.0)])  # fmt: skip
    totals = store.spend(T0 + 1)
    assert [(t.id, t.total_usd, t.period_usd) for t in totals.keys] == [("ka", 1.25, 0.25)]
    assert [(t.id, t.total_usd, t.period_usd) for t in totals.projects] == [("p1", 0.25, 0.25), ("pa", 1.0, 0.0)]
    assert all(isinstance(t.total_usd, float) for t in totals.keys + totals.projects)
    assert store.count(pb.CountEventsRequest(key_id="ka")) == 2
    assert store.count(pb.CountEventsRequest(request_id="c")) == 1


def test_a_failed_batch_is_rolled_back_whole(store: EventStore) -> None:
    store.insert([ev("a")])
    # Both events are valid, but their rollup sum does not fit in 64 bits: the batch fails
    # after its events were inserted, and none of it may stay.
    huge = 2**62
    batch = [ev("b", T0 + HOUR), ev("c", T0 + DAY, prompt_tokens=huge), ev("d", T0 + DAY, prompt_tokens=huge)]
    with pytest.raises((OverflowError, psycopg.DataError)):
        store.insert(batch)
    assert store.count(pb.CountEventsRequest()) == 1
    assert [r.requests for r in store.aggregate(replace(EVERYTHING, group_by=("hour",)))] == [1]
    assert store.insert(batch[:2]) == (2, 0)  # nothing of it was kept, so all of it is new
    assert store.aggregate(EVERYTHING)[0].requests == 3


def test_unknown_or_repeated_dimensions_are_refused(store: EventStore) -> None:
    for dims in [("team",), ("model", "model"), ("key_id",)]:
        with pytest.raises(ValueError, match="dimension"):
            store.aggregate(replace(EVERYTHING, group_by=dims))


def test_rollups_survive_reopening(opener: Opener) -> None:
    first = opener()
    first.insert(random_events(50))
    first.close()
    again = opener()
    assert again.insert(random_events(60)) == (10, 50)
    q = replace(EVERYTHING, group_by=("key", "model"))
    assert again.aggregate(q) == reference(random_events(60), q)


# -- SQLite ----------------------------------------------------------------------------------


def test_sqlite_backfills_rollups_when_migrating_an_old_ledger(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = random_events(200, seed=3)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in sqlite_store.MIGRATIONS[:6]:  # the ledger before rollups
            db.execute(statement)
        db.execute("PRAGMA user_version = 6")
        for e in old:
            db.execute(f"INSERT INTO events VALUES ({', '.join('?' * 21)})", sqlite_store._row(e))
    with closing(SqliteEventStore(path)) as store:
        for dims in [(), ("hour", "key", "project", "model", "provider"), ("day", "model")]:
            assert store.aggregate(replace(EVERYTHING, group_by=dims)) == reference(old, replace(
                EVERYTHING, group_by=dims))  # fmt: skip
        newer = random_events(230, seed=3)  # the same 200, then 30 more
        assert store.insert(newer[150:]) == (30, 50)
        q = replace(EVERYTHING, group_by=("key", "hour"))
        assert store.aggregate(q) == reference(newer, q)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)


def test_sqlite_reports_do_not_wait_for_a_write(tmp_path: Path) -> None:
    with closing(SqliteEventStore(tmp_path / "usage.db")) as store, ThreadPoolExecutor(1) as pool:
        store.insert([ev("a")])
        with store._lock:  # as if a long batch were being written
            assert pool.submit(store.aggregate, EVERYTHING).result(timeout=5)[0].requests == 1
            assert pool.submit(store.count, pb.CountEventsRequest()).result(timeout=5) == 1


@pytest.mark.parametrize(("field", "index"), [("model", "usage_hourly_model"), ("key_id", "usage_hourly_key"),
                                              ("project", "usage_hourly_project")])  # fmt: skip
def test_sqlite_filtered_queries_search_their_index(tmp_path: Path, field: str, index: str) -> None:
    with closing(SqliteEventStore(tmp_path / "usage.db")) as store:
        store.insert(random_events(100))
    text, args = aggregate_sql(replace(EVERYTHING, group_by=("key", "hour"), **{field: "x"}), "?")
    with closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        plan = " / ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {text}", args))
    assert f"SEARCH usage_hourly USING INDEX {index} ({field}=? AND hour_start_ms>? AND hour_start_ms<?)" in plan


# -- PostgreSQL ------------------------------------------------------------------------------


def backend_pid(store: PostgresEventStore) -> int:
    assert store._conn is not None
    return store._conn.info.backend_pid


def wait_until_blocked(admin: psycopg.Connection, pid: int) -> None:
    """Until the backend waits on a lock (the locker's), so we know the write is in flight."""
    deadline = time.monotonic() + 10
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
    while admin.execute(query, (pid,)).fetchone() != ("Lock",):
        assert time.monotonic() < deadline, "the insert never blocked on the lock"
        time.sleep(0.02)


@pytest.fixture
def locker(pg_url: str) -> Iterator[psycopg.Connection]:
    """A connection that can hold the rollup table locked in an open transaction."""
    with psycopg.connect(pg_url) as conn:
        yield conn


def test_postgres_reconnects_after_its_backend_is_killed(admin: psycopg.Connection, pg_url: str) -> None:
    with closing(PostgresEventStore(pg_url)) as store:
        store.insert([ev("a")])
        unavailable = 0
        for call in [lambda: store.insert([ev("b")]), lambda: store.aggregate(EVERYTHING), lambda: store.spend(0)]:
            killed = backend_pid(store)
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (killed,))
            try:
                call()
            except LedgerUnavailableError:
                unavailable += 1
                call()  # and the next call works
            assert backend_pid(store) != killed
        assert unavailable <= 1
        assert store.aggregate(EVERYTHING)[0].requests == 2


def test_postgres_write_cut_off_midway_is_unavailable_and_rolled_back(
    admin: psycopg.Connection, pg_url: str, locker: psycopg.Connection
) -> None:
    with closing(PostgresEventStore(pg_url)) as store, ThreadPoolExecutor(1) as pool:
        store.insert([ev("a")])
        locker.execute("LOCK TABLE usage_hourly IN SHARE ROW EXCLUSIVE MODE")
        pending = pool.submit(store.insert, [ev("b"), ev("c")])  # events in, then waits to add rollups
        pid = backend_pid(store)
        wait_until_blocked(admin, pid)
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        with pytest.raises(LedgerUnavailableError) as failed:
            pending.result(timeout=10)
        assert failed.value.code == "ledger_unavailable"
        locker.rollback()
        assert store.count(pb.CountEventsRequest()) == 1  # not a half-stored batch
        assert store.insert([ev("b"), ev("c")]) == (2, 0)
        assert store.aggregate(EVERYTHING)[0].requests == 3


def test_postgres_statement_timeout_keeps_a_stuck_write_from_hanging(pg_url: str, locker: psycopg.Connection) -> None:
    with closing(PostgresEventStore(pg_url, statement_timeout_ms=300)) as store:
        store.insert([ev("a")])
        pid = backend_pid(store)
        locker.execute("LOCK TABLE usage_hourly IN SHARE ROW EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(LedgerUnavailableError):
            store.insert([ev("b")])
        assert time.monotonic() - started < 5
        locker.rollback()
        assert store.insert([ev("b")]) == (1, 0)
        assert backend_pid(store) == pid  # a timeout leaves the connection in use


def test_postgres_unreachable_database_is_unavailable_not_fatal() -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/test"
    with closing(PostgresEventStore(url)) as store:  # starts regardless
        for call in [lambda: store.insert([ev("a")]), lambda: store.count(pb.CountEventsRequest())]:
            with pytest.raises(LedgerUnavailableError):
                call()
    assert to_status(LedgerUnavailableError("down")).code == grpc.StatusCode.UNAVAILABLE


def test_postgres_migrations_are_recorded_once(admin: psycopg.Connection, pg_url: str, pg_schema: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: PostgresEventStore(pg_url), range(4)))
    for s in stores:
        s.close()
    table = sql.Identifier(pg_schema, "usage_migrations")
    assert admin.execute(sql.SQL("SELECT version FROM {} ORDER BY 1").format(table)).fetchall() == [(1,), (2,)]
    assert admin.execute("SELECT to_regclass('public.usage_hourly')").fetchone() == (None,)


def test_open_store_picks_the_backend(tmp_path: Path, pg_url: str) -> None:
    settings = UsageSettings.from_env({"INTERLOCK_KEY_PEPPER": "p", "INTERLOCK_DATA_DIR": str(tmp_path)})
    with closing(open_store(settings)) as embedded:
        assert isinstance(embedded, SqliteEventStore)
    with closing(open_store(replace(settings, database_url=pg_url))) as shared:
        assert isinstance(shared, PostgresEventStore)
