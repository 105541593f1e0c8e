"""SQLite files the services keep: opened in WAL mode and brought to the newest schema."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


def open_wal(path: Path) -> sqlite3.Connection:
    """An autocommit connection usable from worker threads (callers serialise writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # One fsync per transaction is enough under WAL; a crash loses no committed one.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def migrate(db: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Apply the migrations past the file's user_version, each with its version bump in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, statement in enumerate(migrations[version:], start=version + 1):
        db.execute("BEGIN")
        db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")
