"""The API key store (SQLite). Secrets are never stored: only keyed hashes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson

from interlock.catalog.v1 import catalog_pb2 as pb
from services.common import keys

# Ordered migrations; the index + 1 is the schema version they produce.
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
)

BOOTSTRAP_ID = "bootstrap"


class KeyStore:
    def __init__(self, path: Path, pepper: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._pepper = pepper
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, statement in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    def put_bootstrap(self, secret: str) -> None:
        """Register secret as the bootstrap key, replacing an earlier one."""
        self._db.execute(
            """
            INSERT INTO api_keys (id, name, secret_hash, masked, created_at)
            VALUES (?, 'bootstrap', ?, ?, ?)
            ON CONFLICT(id) DO UPDATE SET secret_hash = excluded.secret_hash,
                masked = excluded.masked, revoked = 0
            """,
            (BOOTSTRAP_ID, keys.hash_secret(secret, self._pepper), keys.mask(secret), int(time.time())),
        )

    def all(self) -> list[pb.ApiKey]:
        rows = self._db.execute(
            "SELECT id, name, project, secret_hash, masked, models, plan, revoked, expires_at,"
            " requests_per_minute FROM api_keys ORDER BY id"
        ).fetchall()
        return [
            pb.ApiKey(
                id=row[0],
                name=row[1],
                project=row[2],
                secret_hash=row[3],
                masked=row[4],
                models=orjson.loads(row[5]),
                plan=row[6],
                revoked=bool(row[7]),
                expires_at=row[8],
                requests_per_minute=row[9],
            )
            for row in rows
        ]

    def close(self) -> None:
        self._db.close()
