"""The PostgreSQL key store: for catalog replicas sharing one database.

Same contract and semantics as `SqliteKeyStore` (see `services.catalog.store`):
the same logical tables, DuplicateError for a taken project id, key id or
secret hash, and a single-row `changes` counter bumped in the same transaction
as every write, so every replica's `version()` sees every replica's writes.

Connection: one psycopg (v3, sync) connection in autocommit mode, serialised
by a lock (the catalog calls the store from worker threads). Its search_path is
set to the store's schema, which is created if missing, so several stores (or
throwaway test schemas) can share one database.

Migrations: `schema_migrations(version, applied_at)` records what has been
applied; MIGRATIONS is ordered and entry N produces version N + 1. Each pending
migration runs in its own transaction that first takes a transaction-scoped
advisory lock keyed by the schema name and then re-reads the applied version,
so replicas starting at once apply each migration exactly once: the loser of
the race waits on the lock and then finds nothing left to do.

Reconnect: when a call fails with psycopg.OperationalError *and* the connection
is actually gone (closed or broken: server restart, terminated backend, network
loss), the connection is dropped and the call is retried once on a new one.
Reads are always retried. Writes are retried only when the failure happened
before the write statement was sent: while (re)connecting, or on the BEGIN that
opens the write's transaction (which is where a connection that died while
idle is discovered). A failure after that is raised, never replayed, since the
write may or may not have committed; the next call reconnects. An
OperationalError on a healthy connection (a cancelled query, a lock timeout)
is raised as is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from services.catalog.store import PROJECT_UPDATABLE, UPDATABLE, DuplicateError, KeyRecord, ProjectRecord
from services.common import pg

_T = TypeVar("_T")
_Connection = psycopg.Connection[tuple[Any, ...]]

# Ordered migrations; entry N produces schema version N + 1 (a row in schema_migrations).
# Migration 1 is the SQLite store's schema as of its version 2; migration 2 adds the projects'
# limits (SQLite's version 3). Text keys use the "C" collation so ORDER BY id sorts by code
# point, as SQLite does, whatever the database's locale.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE projects (
        id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    INSERT INTO projects (id, name, created_at)
        VALUES ('default', 'Default', CAST(extract(epoch FROM now()) AS BIGINT));
    CREATE TABLE api_keys (
        id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT 'default',
        secret_hash TEXT NOT NULL UNIQUE,
        masked TEXT NOT NULL,
        models JSONB NOT NULL DEFAULT '[]',
        plan TEXT NOT NULL DEFAULT '',
        requests_per_minute BIGINT NOT NULL DEFAULT 0,
        tokens_per_minute BIGINT NOT NULL DEFAULT 0,
        burst BIGINT NOT NULL DEFAULT 0,
        budget_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        budget_period TEXT NOT NULL DEFAULT '',
        expires_at BIGINT NOT NULL DEFAULT 0,
        revoked BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
    INSERT INTO changes (id, version) VALUES (1, 1);
    """,
    """
    ALTER TABLE projects
        ADD COLUMN IF NOT EXISTS requests_per_minute BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS tokens_per_minute BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS budget_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS budget_period TEXT NOT NULL DEFAULT '';
    """,
)

# First half of the two-part advisory lock key; the second half is a hash of the schema name.
_LOCK_CLASS = 0x1C7A
_CONNECT_DEFAULTS = {"connect_timeout": "10", "application_name": "interlock-catalog"}

_KEY_COLUMNS = (
    "id, name, project, secret_hash, masked, models, plan, requests_per_minute, tokens_per_minute, burst,"
    " budget_usd, budget_period, expires_at, revoked, created_at"
)
_SELECT_KEYS = f"SELECT {_KEY_COLUMNS} FROM api_keys"  # noqa: S608 - constant columns
_INSERT_KEY = f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({', '.join(['%s'] * 15)})"  # noqa: S608
_BUMP = "UPDATE changes SET version = version + 1 WHERE id = 1"
_PROJECT_COLUMNS = "id, name, created_at, requests_per_minute, tokens_per_minute, budget_usd, budget_period"
_SELECT_PROJECTS = f"SELECT {_PROJECT_COLUMNS} FROM projects"  # noqa: S608 - constant columns
_INSERT_PROJECT = f"INSERT INTO projects ({_PROJECT_COLUMNS}) VALUES ({', '.join(['%s'] * 7)})"  # noqa: S608


def _project(row: tuple[Any, ...]) -> ProjectRecord:
    # Columns in _PROJECT_COLUMNS order.
    return ProjectRecord(
        id=row[0], name=row[1], created_at=int(row[2]), requests_per_minute=int(row[3]),
        tokens_per_minute=int(row[4]), budget_usd=float(row[5]), budget_period=row[6],
    )  # fmt: skip


def _key(row: tuple[Any, ...]) -> KeyRecord:
    # Columns in _KEY_COLUMNS order; psycopg has already turned JSONB into a list, BOOLEAN into a bool.
    return KeyRecord(
        id=row[0], name=row[1], project=row[2], secret_hash=row[3], masked=row[4], models=list(row[5]), plan=row[6],
        requests_per_minute=int(row[7]), tokens_per_minute=int(row[8]), burst=int(row[9]), budget_usd=float(row[10]),
        budget_period=row[11], expires_at=int(row[12]), revoked=bool(row[13]), created_at=int(row[14]),
    )  # fmt: skip


def _param(column: str, value: object) -> object:
    """Adapt an update value to its column's type (SQLite would take a 1 for a boolean; PostgreSQL won't)."""
    if column == "models":
        return Jsonb(value)
    if column == "revoked":
        return bool(value)
    return value


class PostgresKeyStore:
    def __init__(self, url: str, *, schema: str = "interlock") -> None:
        self._url = url
        self._schema = schema
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connection -------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        """The live connection, opening one if there is none. Call with the lock held."""
        if self._closed:
            raise RuntimeError("the key store is closed")
        if self._conn is None or self._conn.closed:
            conn = pg.connect(self._url, _CONNECT_DEFAULTS)
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_if_lost(self) -> bool:
        """After an OperationalError: forget the connection if it is gone; True if it was."""
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return False
        if conn is not None:
            conn.close()
        self._conn = None
        return True

    def _run(self, work: Callable[[_Connection], _T], *, write: bool = False) -> _T:
        """Run `work` on the connection, reconnecting and retrying once as the module docstring says.

        A write runs inside one transaction; a read runs in autocommit.
        """
        with self._lock:
            for attempt in (1, 2):
                sent = False  # whether a write's statement may have reached the server
                try:
                    conn = self._connection()
                    if not write:
                        return work(conn)  # a read is safe to repeat
                    with conn.transaction():
                        sent = True  # BEGIN went through on a live connection: no replaying from here
                        return work(conn)
                except psycopg.errors.UniqueViolation as exc:
                    raise DuplicateError(str(exc)) from exc
                except psycopg.OperationalError:
                    if not self._drop_if_lost() or attempt == 2 or sent:
                        raise
            raise AssertionError("unreachable")

    def _write(self, query: sql.Composed | str, args: tuple[object, ...]) -> int:
        """Run one write and, if it changed anything, bump the change counter in the same transaction."""

        def work(conn: _Connection) -> int:
            changed = conn.execute(query, args).rowcount
            if changed > 0:
                conn.execute(_BUMP)
            return changed

        return self._run(work, write=True)

    def _migrate(self) -> None:
        """Apply pending MIGRATIONS under the schema's advisory lock, creating the schema first."""

        def create_schema(conn: _Connection) -> None:
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self._schema)))

        with self._lock:
            pg.apply_migrations(
                self._connection(),
                MIGRATIONS,
                lock=(_LOCK_CLASS, pg.lock_key(self._schema)),
                table="schema_migrations",
                prepare=create_schema,
            )

    # -- the KeyStore protocol --------------------------------------------------------------

    def create_project(self, project: ProjectRecord) -> None:
        self._write(
            _INSERT_PROJECT,
            (
                project.id, project.name, project.created_at, project.requests_per_minute, project.tokens_per_minute,
                project.budget_usd, project.budget_period,
            ),
        )  # fmt: skip

    def list_projects(self) -> list[ProjectRecord]:
        rows = self._run(lambda c: c.execute(_SELECT_PROJECTS + " ORDER BY id").fetchall())
        return [_project(r) for r in rows]

    def get_project(self, project_id: str) -> ProjectRecord | None:
        row = self._run(lambda c: c.execute(_SELECT_PROJECTS + " WHERE id = %s", (project_id,)).fetchone())
        return _project(row) if row else None

    def update_project(self, project_id: str, changes: dict[str, object]) -> ProjectRecord | None:
        unknown = set(changes) - PROJECT_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in changes)
            query = sql.SQL("UPDATE projects SET {} WHERE id = %s").format(assignments)
            if self._write(query, (*changes.values(), project_id)) == 0:
                return None
        return self.get_project(project_id)

    def create_key(self, key: KeyRecord) -> None:
        self._write(
            _INSERT_KEY,
            (
                key.id, key.name, key.project, key.secret_hash, key.masked, Jsonb(list(key.models)), key.plan,
                key.requests_per_minute, key.tokens_per_minute, key.burst, key.budget_usd, key.budget_period,
                key.expires_at, key.revoked, key.created_at,
            ),
        )  # fmt: skip

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._run(lambda c: c.execute(_SELECT_KEYS + " WHERE id = %s", (key_id,)).fetchone())
        return _key(row) if row else None

    def list_keys(self, project: str = "", include_revoked: bool = True) -> list[KeyRecord]:
        clauses: list[str] = []
        args: list[object] = []
        if project:
            clauses.append("project = %s")
            args.append(project)
        if not include_revoked:
            clauses.append("NOT revoked")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"{_SELECT_KEYS}{where} ORDER BY created_at, id"
        rows = self._run(lambda c: c.execute(query, args).fetchall())
        return [_key(r) for r in rows]

    def update_key(self, key_id: str, changes: dict[str, object]) -> KeyRecord | None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in changes)
            query = sql.SQL("UPDATE api_keys SET {} WHERE id = %s").format(assignments)
            values = tuple(_param(column, value) for column, value in changes.items())
            if self._write(query, (*values, key_id)) == 0:
                return None
        return self.get_key(key_id)

    def version(self) -> int:
        row = self._run(lambda c: c.execute("SELECT version FROM changes WHERE id = 1").fetchone())
        assert row is not None, "the changes row is created by migration 1"
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
