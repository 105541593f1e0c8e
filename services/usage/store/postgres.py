"""The PostgreSQL ledger: for deployments that keep the ledger in a shared database.

Same contract and semantics as `SqliteEventStore`: events idempotent by request id,
hourly rollups (services.usage.store.rollup) updated in the same transaction from the
newly stored events only, aggregate() reading only the rollups. The tables go wherever
the URL's search_path puts them (the public schema by default).

Connection: one psycopg (v3, sync) connection in autocommit mode, serialised by a lock
(the servicer calls in from worker threads). It has a connect timeout, TCP keepalives and
a user timeout, and every statement a server-side statement timeout, so no call hangs on
a database that has gone away or a lock that is never released.

Migrations: `usage_migrations(version, applied_at)` records what has been applied;
MIGRATIONS is ordered and entry N produces version N + 1. As in the catalog's key store,
each pending migration runs in its own transaction that first takes a transaction-scoped
advisory lock keyed by the current schema, then re-reads the applied version, so replicas
starting at once apply each migration exactly once. They run on the first connection,
not in the constructor, so the service starts even while the database is down.

Unavailability: a call that fails with psycopg.OperationalError or InterfaceError (the
server is gone, the backend was terminated, a statement timed out) raises
LedgerUnavailableError, which producers answer by keeping their events and sending them
again. A write's transaction is then rolled back whole (by the server, when the
connection died). A connection that is closed or broken is dropped, and the next call
opens a new one. A connection found dead before anything was sent (on the BEGIN of a
write, or at any point of a read) is replaced and the call retried once at once; a write
whose statements may have reached the server is never replayed by the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from interlock.usage.v1 import usage_pb2 as pb
from services.common import pg
from services.usage.store import (
    AggregateQuery,
    AggregateRow,
    LedgerUnavailableError,
    SpendTotal,
    SpendTotals,
    rollup,
    scores,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Connection = psycopg.Connection[tuple[Any, ...]]

# Ordered migrations; entry N produces version N + 1. The SQLite store's schema as of its
# version 11, under names that cannot clash with another application's in a shared
# database. Text keys use the "C" collation so ORDER BY sorts by code point, as SQLite does.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE usage_events (
        request_id TEXT COLLATE "C" PRIMARY KEY,
        time_unix_ms BIGINT NOT NULL,
        key_id TEXT COLLATE "C" NOT NULL,
        project TEXT COLLATE "C" NOT NULL,
        client_ip TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model_requested TEXT COLLATE "C" NOT NULL,
        model TEXT COLLATE "C" NOT NULL,
        provider TEXT COLLATE "C" NOT NULL,
        deployment TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        latency_ms BIGINT NOT NULL,
        ttft_ms BIGINT NOT NULL,
        status INTEGER NOT NULL,
        error_code TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        metadata_json TEXT NOT NULL,
        stream BOOLEAN NOT NULL
    );
    CREATE INDEX usage_events_model_time ON usage_events (model, time_unix_ms);
    -- Spend sums read only these covering indexes, as in SQLite.
    CREATE INDEX usage_events_key_spend ON usage_events (key_id, time_unix_ms) INCLUDE (cost_usd);
    CREATE INDEX usage_events_project_spend ON usage_events (project, time_unix_ms) INCLUDE (cost_usd);
    CREATE TABLE usage_hourly (
        hour_start_ms BIGINT NOT NULL,
        key_id TEXT COLLATE "C" NOT NULL,
        project TEXT COLLATE "C" NOT NULL,
        model TEXT COLLATE "C" NOT NULL,
        provider TEXT COLLATE "C" NOT NULL,
        requests BIGINT NOT NULL,
        successful BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        latency_ms_sum BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        ttft_ms_sum BIGINT NOT NULL,
        ttft_count BIGINT NOT NULL,
        PRIMARY KEY (hour_start_ms, key_id, project, model, provider)
    );
    CREATE INDEX usage_hourly_model ON usage_hourly (model, hour_start_ms);
    CREATE INDEX usage_hourly_key ON usage_hourly (key_id, hour_start_ms);
    CREATE INDEX usage_hourly_project ON usage_hourly (project, hour_start_ms);
    """,
    # Evaluation scores (services.usage.store.scores), as in SQLite.
    """
    CREATE TABLE usage_scores (
        request_id TEXT COLLATE "C" NOT NULL,
        evaluator TEXT COLLATE "C" NOT NULL,
        source INTEGER NOT NULL,
        kind TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        passed BOOLEAN NOT NULL,
        detail TEXT NOT NULL,
        error BOOLEAN NOT NULL,
        time_unix_ms BIGINT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        key_id TEXT COLLATE "C" NOT NULL,
        project TEXT COLLATE "C" NOT NULL,
        model TEXT COLLATE "C" NOT NULL,
        provider TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (request_id, evaluator, source)
    );
    CREATE INDEX usage_scores_model_hour ON usage_scores (model, hour_start_ms);
    CREATE INDEX usage_scores_hour ON usage_scores (hour_start_ms);
    """,
)

# First half of the two-part advisory lock key (the catalog's is 0x1C7A); the second half
# is a hash of the schema the tables go to.
_LOCK_CLASS = 0x05A6
_CONNECT_DEFAULTS = {"connect_timeout": "5", "application_name": "interlock-usage", **pg.KEEPALIVES}
_WORK_MEM_KB = 32 * 1024
_LOST = (psycopg.OperationalError, psycopg.InterfaceError)

_EVENT_COLUMNS = (
    ("request_id", "text"), ("time_unix_ms", "bigint"), ("key_id", "text"), ("project", "text"),
    ("client_ip", "text"), ("endpoint", "text"), ("model_requested", "text"), ("model", "text"),
    ("provider", "text"), ("deployment", "text"), ("prompt_tokens", "bigint"), ("completion_tokens", "bigint"),
    ("cached_tokens", "bigint"), ("cost_usd", "float8"), ("latency_ms", "bigint"), ("ttft_ms", "bigint"),
    ("status", "int4"), ("error_code", "text"), ("attempts", "int4"), ("metadata_json", "text"),
    ("stream", "bool"),
)  # fmt: skip
_ROLLUP_TYPES = ("bigint", "text", "text", "text", "text", *(["bigint"] * 7), "float8", "bigint", "bigint")


def _unnest(types: Sequence[str]) -> str:
    """A SELECT over one array parameter per column: a whole batch in one statement."""
    return f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"  # noqa: S608 - constant types


_INSERT = (
    f"INSERT INTO usage_events ({', '.join(c for c, _ in _EVENT_COLUMNS)})"
    f" {_unnest([t for _, t in _EVENT_COLUMNS])} ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)
_UPSERT = rollup.upsert_sql(_unnest(_ROLLUP_TYPES))
_UPSERT_SCORE = scores.upsert_sql("usage_scores", f"VALUES ({', '.join(['%s'] * len(scores.COLUMNS))})")
_FIND = "SELECT time_unix_ms, key_id, project, model, model_requested, provider FROM usage_events WHERE request_id = %s"
# As SQLite's: one statement, so keys and projects come from one snapshot.
_SPEND = """
    SELECT 'key', key_id, COALESCE(SUM(cost_usd), 0),
           COALESCE(SUM(cost_usd) FILTER (WHERE time_unix_ms >= %(since)s), 0)
    FROM usage_events WHERE key_id > '' GROUP BY key_id
    UNION ALL
    SELECT 'project', project, COALESCE(SUM(cost_usd), 0),
           COALESCE(SUM(cost_usd) FILTER (WHERE time_unix_ms >= %(since)s), 0)
    FROM usage_events WHERE project > '' GROUP BY project
    ORDER BY 1, 2
"""


def _columns(events: Sequence[pb.UsageEvent]) -> list[list[Any]]:
    """The events as one list per column, in _EVENT_COLUMNS order."""
    return [
        [e.request_id for e in events], [e.time_unix_ms for e in events], [e.key_id for e in events],
        [e.project for e in events], [e.client_ip for e in events], [e.endpoint for e in events],
        [e.model_requested for e in events], [e.model for e in events], [e.provider for e in events],
        [e.deployment for e in events], [e.prompt_tokens for e in events], [e.completion_tokens for e in events],
        [e.cached_tokens for e in events], [e.cost_usd for e in events], [e.latency_ms for e in events],
        [e.ttft_ms for e in events], [int(e.status) for e in events], [e.error_code for e in events],
        [e.attempts for e in events], [e.metadata_json for e in events], [e.stream for e in events],
    ]  # fmt: skip


class PostgresEventStore:
    def __init__(self, url: str, *, statement_timeout_ms: int = 30_000) -> None:
        conninfo_to_dict(url)  # a malformed URL is a configuration error: fail now, not per call
        self._url = url
        self._statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._migrated = False
        self._closed = False
        try:
            self._run(lambda conn: None)  # connect and migrate now if the database is there
        except LedgerUnavailableError:
            log.warning("usage ledger database unavailable at start; every call tries again")

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        conn = pg.connect(self._url, _CONNECT_DEFAULTS)
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{self._statement_timeout_ms}ms",))
            # psycopg prepares a statement run 5 times, and after 5 more PostgreSQL may settle on
            # a generic plan, blind to the time window: the bench's 30-day reports ran 6x slower
            # on it. Always plan for the actual values (statements are still prepared once).
            conn.execute("SELECT set_config('plan_cache_mode', 'force_custom_plan', false)")
            # Reports sort or hash tens of thousands of rollup rows: with the default 4 MB they
            # spill to disk (the bench's 30-day reports ran 2x faster with this). Only ever raised.
            conn.execute(
                "SELECT set_config('work_mem', %s, false) FROM pg_settings"
                " WHERE name = 'work_mem' AND setting::int < %s",
                (f"{_WORK_MEM_KB}kB", _WORK_MEM_KB),
            )
            if not self._migrated:
                self._migrate(conn)
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: _Connection) -> None:
        """Apply pending MIGRATIONS under the advisory lock of the schema the tables go to."""
        schema = conn.execute("SELECT current_schema()").fetchone()
        key = pg.lock_key(str(schema[0] if schema else ""))
        pg.apply_migrations(conn, MIGRATIONS, lock=(_LOCK_CLASS, key), table="usage_migrations")

    def _drop_if_lost(self) -> bool:
        """After a failure: forget the connection if it is gone; True if it was."""
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return False
        if conn is not None:
            conn.close()
        self._conn = None
        return True

    def _run(self, work: Callable[[_Connection], _T], *, write: bool = False) -> _T:
        """Run work on the connection, as the module docstring says: a write in one transaction."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the usage store is closed")
            for attempt in (1, 2):
                # An open connection from an earlier call may have died while idle; one that is
                # being opened now failing is the database being away, and is not retried.
                stale = self._conn is not None and not self._conn.closed
                sent = False  # whether a write's statements may have reached the server
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    conn = self._conn
                    if not write:
                        return work(conn)
                    with conn.transaction():
                        sent = True
                        return work(conn)
                except _LOST as exc:
                    if self._drop_if_lost() and stale and not sent and attempt == 1:
                        continue
                    # The database's own words name hosts and ports: for the log, not for callers.
                    log.warning("usage ledger database call failed: %s", exc)
                    raise LedgerUnavailableError("the usage ledger is unavailable; try again later") from exc
            raise AssertionError("unreachable")

    # -- the EventStore protocol ------------------------------------------------------------

    def insert(self, events: Sequence[pb.UsageEvent]) -> tuple[int, int]:
        unique = rollup.first_of_each_id(events)
        if not unique:
            return 0, 0

        def work(conn: _Connection) -> int:
            with conn.cursor() as cur:
                stored = {row[0] for row in cur.execute(_INSERT, _columns(unique))}
                rows = rollup.rollup_rows(e for e in unique if e.request_id in stored)
                if rows:
                    cur.execute(_UPSERT, [list(column) for column in zip(*rows, strict=True)])
            return len(stored)

        stored = self._run(work, write=True)
        return stored, len(events) - stored

    def count(self, request: pb.CountEventsRequest) -> int:
        clauses, args = [], []
        for column in ("key_id", "model", "request_id"):
            value = getattr(request, column)
            if value:
                clauses.append(f"{column} = %s")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT COUNT(*) FROM usage_events{where}"  # noqa: S608 - fixed column names, bound values
        row = self._run(lambda conn: conn.execute(query, args).fetchone())
        return int(row[0]) if row else 0

    def spend(self, period_start_unix_ms: int) -> SpendTotals:
        rows = self._run(lambda conn: conn.execute(_SPEND, {"since": period_start_unix_ms}).fetchall())
        totals = SpendTotals(keys=[], projects=[])
        for kind, owner, total, period in rows:
            (totals.keys if kind == "key" else totals.projects).append(SpendTotal(owner, float(total), float(period)))
        return totals

    def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        text, args = rollup.aggregate_sql(query, "%s")
        score_text, score_args = scores.aggregate_sql("usage_scores", query, "%s")

        def work(conn: _Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            # One transaction, so the usage rows and their scores are of one snapshot.
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                return conn.execute(text, args).fetchall(), conn.execute(score_text, score_args).fetchall()

        rows, score_rows = self._run(work)
        return scores.merge(query, rollup.to_rows(query, rows), score_rows)

    def insert_scores(self, batch: Sequence[pb.QualityScore]) -> int:
        if not batch:
            return 0

        def work(conn: _Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(_UPSERT_SCORE, [scores.score_row(s) for s in batch])

        self._run(work, write=True)
        return len(batch)

    def find_event(self, request_id: str) -> pb.UsageEvent | None:
        row = self._run(lambda conn: conn.execute(_FIND, (request_id,)).fetchone())
        if row is None:
            return None
        time_ms, key_id, project, model, model_requested, provider = row
        return pb.UsageEvent(
            request_id=request_id, time_unix_ms=time_ms, key_id=key_id, project=project, model=model,
            model_requested=model_requested, provider=provider,
        )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
