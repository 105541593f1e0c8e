"""The SQLite job store: the embedded default, a file of its own beside the ledger.
One connection serialised by a lock (the servicer calls in from worker threads)."""

from __future__ import annotations

import threading
from pathlib import Path

from interlock.jobs.v1 import jobs_pb2 as jpb
from services.common.sqlite_db import migrate, open_wal
from services.usage.jobs.store import FINISHED

MIGRATIONS = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        job BLOB NOT NULL
    )
    """,
    "CREATE INDEX jobs_status ON jobs (status, updated_ms)",
    "CREATE INDEX jobs_updated ON jobs (updated_ms)",
    """
    CREATE TABLE agent_sessions (
        id TEXT PRIMARY KEY,
        updated_ms INTEGER NOT NULL,
        session BLOB NOT NULL
    )
    """,
    "CREATE INDEX agent_sessions_updated ON agent_sessions (updated_ms)",
)
_UNFINISHED = f"({', '.join(str(int(s)) for s in (jpb.JOB_STATUS_QUEUED, jpb.JOB_STATUS_RUNNING))})"
_FINISHED = f"({', '.join(str(int(s)) for s in FINISHED)})"
# Constant status lists only: the values are bound.
_STALE = f"SELECT job, updated_ms FROM jobs WHERE status IN {_UNFINISHED} AND updated_ms < ? ORDER BY updated_ms"  # noqa: S608
_CLAIM = f"UPDATE jobs SET updated_ms = ? WHERE id = ? AND updated_ms = ? AND status IN {_UNFINISHED}"  # noqa: S608
_TOUCH = f"UPDATE jobs SET updated_ms = ? WHERE id = ? AND status IN {_UNFINISHED}"  # noqa: S608


def _updated_ms(job: jpb.Job) -> int:
    return job.update_time.ToMilliseconds()


class SqliteJobStore:
    def __init__(self, path: Path) -> None:
        self._db = open_wal(path)
        self._lock = threading.Lock()
        migrate(self._db, MIGRATIONS)

    def create(self, job: jpb.Job) -> jpb.Job:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, updated_ms, job) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                (job.id, int(job.status), _updated_ms(job), job.SerializeToString()),
            )
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return jpb.Job.FromString(row[0])

    def save(self, job: jpb.Job) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, updated_ms = ?, job = ? WHERE id = ?",
                (int(job.status), _updated_ms(job), job.SerializeToString(), job.id),
            )

    def get(self, job_id: str) -> jpb.Job | None:
        with self._lock:
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return jpb.Job.FromString(row[0]) if row else None

    def stale(self, before_ms: int) -> list[tuple[jpb.Job, int]]:
        with self._lock:
            rows = self._db.execute(_STALE, (before_ms,)).fetchall()
        return [(jpb.Job.FromString(row[0]), int(row[1])) for row in rows]

    def claim(self, job_id: str, seen_ms: int, now_ms: int) -> bool:
        with self._lock:
            return bool(self._db.execute(_CLAIM, (now_ms, job_id, seen_ms)).rowcount)

    def touch(self, job_ids: list[str], now_ms: int) -> None:
        with self._lock:
            self._db.executemany(_TOUCH, [(now_ms, job_id) for job_id in job_ids])

    def get_session(self, session_id: str) -> jpb.Session | None:
        with self._lock:
            row = self._db.execute("SELECT session FROM agent_sessions WHERE id = ?", (session_id,)).fetchone()
        return jpb.Session.FromString(row[0]) if row else None

    def save_session(self, session: jpb.Session, time_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO agent_sessions (id, updated_ms, session) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET updated_ms = excluded.updated_ms, session = excluded.session",
                (session.id, time_ms, session.SerializeToString()),
            )

    def delete_before(self, time_ms: int) -> int:
        jobs = f"DELETE FROM jobs WHERE status IN {_FINISHED} AND updated_ms < ?"  # noqa: S608 - constants
        with self._lock:
            deleted = self._db.execute(jobs, (time_ms,)).rowcount
            deleted += self._db.execute("DELETE FROM agent_sessions WHERE updated_ms < ?", (time_ms,)).rowcount
        return int(deleted)

    def close(self) -> None:
        with self._lock:
            self._db.close()
