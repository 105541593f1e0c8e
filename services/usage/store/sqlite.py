"""The SQLite ledger: the embedded default."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from interlock.usage.v1 import usage_pb2 as pb
from services.usage.store import SpendTotal, SpendTotals

MIGRATIONS = (
    """
    CREATE TABLE events (
        request_id TEXT PRIMARY KEY,
        time_unix_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        project TEXT NOT NULL,
        client_ip TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model_requested TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        deployment TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error_code TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        metadata_json TEXT NOT NULL,
        stream INTEGER NOT NULL
    )
    """,
    "CREATE INDEX events_model_time ON events (model, time_unix_ms)",
    "CREATE INDEX events_key_time ON events (key_id, time_unix_ms)",
    # Spend sums read only these covering indexes, never the wide rows. The key one also
    # serves every lookup events_key_time did, so it replaces that one.
    "CREATE INDEX events_key_spend ON events (key_id, time_unix_ms, cost_usd)",
    "DROP INDEX events_key_time",
    "CREATE INDEX events_project_spend ON events (project, time_unix_ms, cost_usd)",
)

_COLUMNS = (
    "request_id, time_unix_ms, key_id, project, client_ip, endpoint, model_requested, model, provider,"
    " deployment, prompt_tokens, completion_tokens, cached_tokens, cost_usd, latency_ms, ttft_ms, status,"
    " error_code, attempts, metadata_json, stream"
)

# One statement, so keys and projects are summed from the same snapshot. `> ''` leaves the
# anonymous rows out by an index range instead of reading them; TOTAL is a float, 0.0 when empty.
_SPEND = """
    SELECT 'key', key_id, TOTAL(cost_usd), TOTAL(CASE WHEN time_unix_ms >= :since THEN cost_usd END)
    FROM events WHERE key_id > '' GROUP BY key_id
    UNION ALL
    SELECT 'project', project, TOTAL(cost_usd), TOTAL(CASE WHEN time_unix_ms >= :since THEN cost_usd END)
    FROM events WHERE project > '' GROUP BY project
"""

_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 21)}) ON CONFLICT(request_id) DO NOTHING"  # noqa: S608


class SqliteEventStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # One fsync per batch is enough under WAL; a crash loses no committed batch.
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, statement in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN")
            self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {number}")
            self._db.execute("COMMIT")

    def insert(self, events: Sequence[pb.UsageEvent]) -> tuple[int, int]:
        rows = [
            (
                e.request_id, e.time_unix_ms, e.key_id, e.project, e.client_ip, e.endpoint,
                e.model_requested, e.model, e.provider, e.deployment, e.prompt_tokens,
                e.completion_tokens, e.cached_tokens, e.cost_usd, e.latency_ms, e.ttft_ms,
                int(e.status), e.error_code, e.attempts, e.metadata_json, int(e.stream),
            )
            for e in events
        ]  # fmt: skip
        self._db.execute("BEGIN")
        try:
            before = self._db.total_changes
            self._db.executemany(_INSERT, rows)
            stored = self._db.total_changes - before
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return stored, len(rows) - stored

    def count(self, request: pb.CountEventsRequest) -> int:
        clauses, args = [], []
        for column in ("key_id", "model", "request_id"):
            value = getattr(request, column)
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT COUNT(*) FROM events{where}"  # noqa: S608 - fixed column names, bound values
        return int(self._db.execute(query, args).fetchone()[0])

    def spend(self, period_start_unix_ms: int) -> SpendTotals:
        totals = SpendTotals(keys=[], projects=[])
        for kind, owner, total, period in self._db.execute(_SPEND, {"since": period_start_unix_ms}):
            (totals.keys if kind == "key" else totals.projects).append(SpendTotal(owner, total, period))
        return totals

    def close(self) -> None:
        self._db.close()
