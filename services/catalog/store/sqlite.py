"""The SQLite key store: the embedded default."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

from services.catalog.store import PROJECT_UPDATABLE, UPDATABLE, DuplicateError, KeyRecord, ProjectRecord

# Ordered migrations; the index + 1 is the schema version they produce (PRAGMA user_version).
MIGRATIONS = (
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT 'default',
        secret_hash TEXT NOT NULL UNIQUE,
        masked TEXT NOT NULL,
        models TEXT NOT NULL DEFAULT '[]',
        plan TEXT NOT NULL DEFAULT '',
        requests_per_minute INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    INSERT INTO projects (id, name, created_at) VALUES ('default', 'Default', CAST(strftime('%s','now') AS INTEGER));
    ALTER TABLE api_keys ADD COLUMN tokens_per_minute INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN burst INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN budget_usd REAL NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN budget_period TEXT NOT NULL DEFAULT '';
    CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO changes (id, version) VALUES (1, 1);
    """,
    """
    ALTER TABLE projects ADD COLUMN requests_per_minute INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN tokens_per_minute INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN budget_usd REAL NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN budget_period TEXT NOT NULL DEFAULT '';
    """,
)

_KEY_COLUMNS = (
    "id, name, project, secret_hash, masked, models, plan, requests_per_minute, tokens_per_minute, burst,"
    " budget_usd, budget_period, expires_at, revoked, created_at"
)

_PROJECT_COLUMNS = "id, name, created_at, requests_per_minute, tokens_per_minute, budget_usd, budget_period"


def _project(row: tuple[object, ...]) -> ProjectRecord:
    pid, name, created, rpm, tpm, budget, period = row
    return ProjectRecord(
        id=str(pid), name=str(name), created_at=int(created), requests_per_minute=int(rpm),  # type: ignore[call-overload]
        tokens_per_minute=int(tpm), budget_usd=float(budget), budget_period=str(period),  # type: ignore[call-overload,arg-type]
    )  # fmt: skip


def _key(row: tuple[object, ...]) -> KeyRecord:
    (
        kid,
        name,
        project,
        secret_hash,
        masked,
        models,
        plan,
        rpm,
        tpm,
        burst,
        budget,
        period,
        expires,
        revoked,
        created,
    ) = row
    return KeyRecord(
        id=str(kid), name=str(name), project=str(project), secret_hash=str(secret_hash), masked=str(masked),
        models=list(orjson.loads(str(models))), plan=str(plan), requests_per_minute=int(rpm),  # type: ignore[call-overload]
        tokens_per_minute=int(tpm), burst=int(burst), budget_usd=float(budget),  # type: ignore[call-overload,arg-type]
        budget_period=str(period), expires_at=int(expires), revoked=bool(revoked), created_at=int(created),  # type: ignore[call-overload]
    )  # fmt: skip


class SqliteKeyStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the servicer's worker threads, serialised by a lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in (s for s in script.split(";") if s.strip()):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        """Run one write and bump the change counter in the same transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = self._db.execute(sql, args).rowcount
                self._db.execute("UPDATE changes SET version = version + 1 WHERE id = 1")
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise DuplicateError(str(exc)) from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(changed)

    def create_project(self, project: ProjectRecord) -> None:
        self._write(
            f"INSERT INTO projects ({_PROJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
            (
                project.id, project.name, project.created_at, project.requests_per_minute, project.tokens_per_minute,
                project.budget_usd, project.budget_period,
            ),
        )  # fmt: skip

    def list_projects(self) -> list[ProjectRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_PROJECT_COLUMNS} FROM projects ORDER BY id").fetchall()  # noqa: S608
        return [_project(r) for r in rows]

    def get_project(self, project_id: str) -> ProjectRecord | None:
        query = f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?"  # noqa: S608 - constant columns
        with self._lock:
            row = self._db.execute(query, (project_id,)).fetchone()
        return _project(row) if row else None

    def update_project(self, project_id: str, changes: dict[str, object]) -> ProjectRecord | None:
        unknown = set(changes) - PROJECT_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            query = f"UPDATE projects SET {assignments} WHERE id = ?"  # noqa: S608 - checked columns
            if self._write(query, (*changes.values(), project_id)) == 0:
                return None
        return self.get_project(project_id)

    def create_key(self, key: KeyRecord) -> None:
        self._write(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 15)})",  # noqa: S608 - constant columns
            (
                key.id, key.name, key.project, key.secret_hash, key.masked, orjson.dumps(key.models).decode(), key.plan,
                key.requests_per_minute, key.tokens_per_minute, key.burst, key.budget_usd, key.budget_period,
                key.expires_at, int(key.revoked), key.created_at,
            ),
        )  # fmt: skip

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()  # noqa: S608
        return _key(row) if row else None

    def list_keys(self, project: str = "", include_revoked: bool = True) -> list[KeyRecord]:
        clauses, args = [], []
        if project:
            clauses.append("project = ?")
            args.append(project)
        if not include_revoked:
            clauses.append("revoked = 0")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id"  # noqa: S608 - fixed clauses
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_key(r) for r in rows]

    def update_key(self, key_id: str, changes: dict[str, object]) -> KeyRecord | None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            values = [orjson.dumps(v).decode() if k == "models" else v for k, v in changes.items()]
            assignments = ", ".join(f"{column} = ?" for column in changes)
            if self._write(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*values, key_id)) == 0:  # noqa: S608
                return None
        return self.get_key(key_id)

    def version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT version FROM changes WHERE id = 1").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
