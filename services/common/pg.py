"""What the PostgreSQL stores (catalog's keys, usage's ledger) share: schema migrations
applied once however many replicas start together."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

Connection = psycopg.Connection[tuple[Any, ...]]
_CREATE_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


# A server that vanishes without a word (a network partition) is noticed within about 30 s
# instead of never: a statement timeout only works while the server is there.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def connect(url: str, defaults: dict[str, str]) -> Connection:
    """An autocommit connection to `url`; each default applies unless the URL sets it."""
    given = conninfo_to_dict(url)
    return psycopg.connect(make_conninfo(url, **{k: v for k, v in defaults.items() if k not in given}), autocommit=True)


def lock_key(name: str) -> int:
    """A name (the schema) hashed to a signed 32-bit integer, an advisory lock's second key."""
    return int.from_bytes(zlib.crc32(name.encode()).to_bytes(4, "big"), "big", signed=True)


def apply_migrations(
    conn: Connection,
    migrations: Sequence[str],
    *,
    lock: tuple[int, int],
    table: str,
    prepare: Callable[[Connection], None] | None = None,
) -> None:
    """Apply the pending migrations, one transaction each, under a transaction-scoped advisory
    lock: a replica that waits on it sees the versions the other recorded in `table`.
    Entry N of `migrations` produces version N + 1; one entry may hold several statements."""
    versions = sql.Identifier(table)
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", lock)
            if prepare is not None:
                prepare(conn)
            conn.execute(sql.SQL(_CREATE_VERSIONS).format(versions))
            row = conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(versions)).fetchone()
            applied = int(row[0]) if row else 0
            if applied >= len(migrations):
                return
            conn.execute(migrations[applied])  # no parameters, so it may hold several statements
            conn.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(versions), (applied + 1,))
