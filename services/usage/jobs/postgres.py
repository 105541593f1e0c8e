"""The PostgreSQL job store, for deployments that keep usage in PostgreSQL: same
contract as SqliteJobStore, tables beside the ledger's (wherever the URL's
search_path puts them), migrations applied once however many replicas start
(services.common.pg). One autocommit connection serialised by a lock; a lost
connection is dropped and the call fails with LedgerUnavailableError (UNAVAILABLE),
the next call connects again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from interlock.jobs.v1 import jobs_pb2 as jpb
from services.common import pg
from services.common.errors import LedgerUnavailableError
from services.usage.jobs.store import FINISHED

_T = TypeVar("_T")
_Connection = psycopg.Connection[tuple[Any, ...]]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE usage_jobs (
        id TEXT PRIMARY KEY,
        status INTEGER NOT NULL,
        updated_ms BIGINT NOT NULL,
        job BYTEA NOT NULL
    );
    CREATE INDEX usage_jobs_status ON usage_jobs (status, updated_ms);
    CREATE INDEX usage_jobs_updated ON usage_jobs (updated_ms);
    CREATE TABLE usage_agent_sessions (
        id TEXT PRIMARY KEY,
        updated_ms BIGINT NOT NULL,
        session BYTEA NOT NULL
    );
    CREATE INDEX usage_agent_sessions_updated ON usage_agent_sessions (updated_ms);
    """,
)
# First half of the advisory lock key (the ledger's is 0x05A6).
_LOCK_CLASS = 0x05A7
_UNFINISHED = [int(jpb.JOB_STATUS_QUEUED), int(jpb.JOB_STATUS_RUNNING)]
_FINISHED = [int(s) for s in FINISHED]
_LOST = (psycopg.OperationalError, psycopg.InterfaceError)


class PostgresJobStore:
    def __init__(self, url: str, *, connect_timeout_s: int = 5) -> None:
        self._url = url
        self._connect_timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: _Connection | None = None

    def _connection(self) -> _Connection:
        if self._conn is None or self._conn.closed:
            conn = pg.connect(
                self._url,
                {"connect_timeout": str(self._connect_timeout), "application_name": "interlock-jobs", **pg.KEEPALIVES},
            )
            schema = conn.execute("SELECT current_schema()").fetchone()
            lock = (_LOCK_CLASS, pg.lock_key(str(schema[0] if schema else "")))
            pg.apply_migrations(conn, MIGRATIONS, lock=lock, table="usage_jobs_migrations")
            self._conn = conn
        return self._conn

    def _run(self, work: Callable[[_Connection], _T]) -> _T:
        with self._lock:
            try:
                return work(self._connection())
            except _LOST as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise LedgerUnavailableError("the job store's database is unavailable") from exc

    def create(self, job: jpb.Job) -> jpb.Job:
        def work(conn: _Connection) -> bytes:
            conn.execute(
                "INSERT INTO usage_jobs (id, status, updated_ms, job) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (job.id, int(job.status), job.update_time.ToMilliseconds(), job.SerializeToString()),
            )
            row = conn.execute("SELECT job FROM usage_jobs WHERE id = %s", (job.id,)).fetchone()
            assert row is not None
            return bytes(row[0])

        return jpb.Job.FromString(self._run(work))

    def save(self, job: jpb.Job) -> None:
        self._run(
            lambda conn: conn.execute(
                "UPDATE usage_jobs SET status = %s, updated_ms = %s, job = %s WHERE id = %s",
                (int(job.status), job.update_time.ToMilliseconds(), job.SerializeToString(), job.id),
            )
        )

    def get(self, job_id: str) -> jpb.Job | None:
        row = self._run(lambda conn: conn.execute("SELECT job FROM usage_jobs WHERE id = %s", (job_id,)).fetchone())
        return jpb.Job.FromString(bytes(row[0])) if row else None

    def stale(self, before_ms: int) -> list[tuple[jpb.Job, int]]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT job, updated_ms FROM usage_jobs WHERE status = ANY(%s) AND updated_ms < %s ORDER BY updated_ms",
                (_UNFINISHED, before_ms),
            ).fetchall()
        )
        return [(jpb.Job.FromString(bytes(row[0])), int(row[1])) for row in rows]

    def claim(self, job_id: str, seen_ms: int, now_ms: int) -> bool:
        return self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE usage_jobs SET updated_ms = %s WHERE id = %s AND updated_ms = %s AND status = ANY(%s)",
                    (now_ms, job_id, seen_ms, _UNFINISHED),
                ).rowcount
                == 1
            )
        )

    def touch(self, job_ids: list[str], now_ms: int) -> None:
        self._run(
            lambda conn: conn.execute(
                "UPDATE usage_jobs SET updated_ms = %s WHERE id = ANY(%s) AND status = ANY(%s)",
                (now_ms, job_ids, _UNFINISHED),
            )
        )

    def get_session(self, session_id: str) -> jpb.Session | None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT session FROM usage_agent_sessions WHERE id = %s", (session_id,)
            ).fetchone()
        )
        return jpb.Session.FromString(bytes(row[0])) if row else None

    def save_session(self, session: jpb.Session, time_ms: int) -> None:
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO usage_agent_sessions (id, updated_ms, session) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET updated_ms = excluded.updated_ms, session = excluded.session",
                (session.id, time_ms, session.SerializeToString()),
            )
        )

    def delete_before(self, time_ms: int) -> int:
        def work(conn: _Connection) -> int:
            with conn.transaction():
                jobs = conn.execute(
                    "DELETE FROM usage_jobs WHERE status = ANY(%s) AND updated_ms < %s", (_FINISHED, time_ms)
                ).rowcount
                sessions = conn.execute("DELETE FROM usage_agent_sessions WHERE updated_ms < %s", (time_ms,)).rowcount
            return jobs + sessions

        return self._run(work)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
