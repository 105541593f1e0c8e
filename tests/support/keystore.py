"""Shared by the key-store tests: the PostgreSQL server they use and a key record
maker. The `admin` and `pg_schema` fixtures are in tests/conftest.py."""

from __future__ import annotations

import os

from services.catalog.store import KeyRecord

PG_URL = os.environ.get("INTERLOCK_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def key(kid: str, **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "name": f"key {kid}",
        "project": "default",
        "secret_hash": f"hash-{kid}",
        "masked": f"{kid[:4]}****",
        "created_at": 1_700_000_000,
    }
    values.update(fields)
    return KeyRecord(id=kid, **values)  # type: ignore[arg-type]
