"""PostgreSQL-only behaviour of the key store, on a real server (see
test_keystore.py): recorded migrations, in-place upgrades, replicas starting at
once, reconnecting after the backend is killed, never replaying a sent write."""

from __future__ import annotations

import threading
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from services.catalog.store import ProjectRecord
from services.catalog.store import postgres as pg_store
from services.catalog.store.postgres import PostgresKeyStore
from tests.support.keystore import PG_URL, key


def backend_pid(store: PostgresKeyStore) -> int:
    assert store._conn is not None
    return store._conn.info.backend_pid


def kill(admin: psycopg.Connection, pid: int) -> None:
    assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)


def test_postgres_migrations_are_recorded_once(admin: psycopg.Connection, pg_schema: str) -> None:
    for _ in range(2):
        PostgresKeyStore(PG_URL, schema=pg_schema).close()
    rows = admin.execute(
        sql.SQL("SELECT version, applied_at IS NOT NULL FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(pg_schema)
        )
    ).fetchall()
    assert rows == [(n, True) for n in range(1, len(pg_store.MIGRATIONS) + 1)]
    # Nothing leaked into the default schema.
    assert admin.execute("SELECT to_regclass('public.api_keys')").fetchone() == (None,)


def test_postgres_upgrades_a_version_1_schema_keeping_its_projects(admin: psycopg.Connection, pg_schema: str) -> None:
    """A schema written by the previous release (migration 1 only): projects without limit columns."""
    with admin.transaction():
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
        admin.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(pg_schema)))
        admin.execute(pg_store.MIGRATIONS[0])
        admin.execute(
            "CREATE TABLE schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        admin.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        admin.execute("INSERT INTO projects (id, name, created_at) VALUES ('team', 'Team', 1600000000)")
        admin.execute(
            "INSERT INTO api_keys (id, name, project, secret_hash, masked, created_at)"
            " VALUES ('k', 'K', 'team', 'k-hash', 'k-****', 1600000001)"
        )

    def project_columns() -> list[str]:
        return [
            r[0]
            for r in admin.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'projects'",
                (pg_schema,),
            )
        ]

    assert "budget_usd" not in project_columns()
    store = PostgresKeyStore(PG_URL, schema=pg_schema)
    try:
        assert {"requests_per_minute", "tokens_per_minute", "budget_usd", "budget_period"} <= set(project_columns())
        assert store.get_project("team") == ProjectRecord(id="team", name="Team", created_at=1_600_000_000)
        assert [p.id for p in store.list_projects()] == ["default", "team"]
        assert store.get_key("k") == key("k", name="K", project="team", secret_hash="k-hash", masked="k-****",
                                         created_at=1_600_000_001)  # fmt: skip
        updated = store.update_project(
            "team", {"requests_per_minute": 60, "budget_usd": 4.5, "budget_period": "monthly"}
        )
        assert updated == ProjectRecord(
            id="team", name="Team", created_at=1_600_000_000, requests_per_minute=60, budget_usd=4.5,
            budget_period="monthly",
        )  # fmt: skip
    finally:
        store.close()
    versions = admin.execute(
        sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version").format(sql.Identifier(pg_schema))
    ).fetchall()
    assert versions == [(n,) for n in range(1, len(pg_store.MIGRATIONS) + 1)]


def test_postgres_replicas_starting_at_once_all_succeed(admin: psycopg.Connection, pg_schema: str) -> None:
    count = 6
    start = threading.Barrier(count)
    stores: list[PostgresKeyStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            stores.append(PostgresKeyStore(PG_URL, schema=pg_schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert len(stores) == count
        assert [p.id for p in stores[0].list_projects()] == ["default"]
        assert len({s.version() for s in stores}) == 1
        migrations = admin.execute(
            sql.SQL("SELECT count(*) FROM {}.schema_migrations").format(sql.Identifier(pg_schema))
        ).fetchone()
        assert migrations == (len(pg_store.MIGRATIONS),)
    finally:
        for s in stores:
            s.close()


def test_postgres_reconnects_after_the_backend_is_killed(admin: psycopg.Connection, pg_schema: str) -> None:
    store = PostgresKeyStore(PG_URL, schema=pg_schema)
    try:
        store.create_key(key("k1"))
        first = backend_pid(store)
        kill(admin, first)
        # A read on the dead connection reconnects and retries.
        assert store.get_key("k1") == key("k1")
        second = backend_pid(store)
        assert second != first

        # A write whose connection died while idle fails on BEGIN, before the write is sent:
        # it is retried on a new connection, and applied (and counted) exactly once.
        v = store.version()
        kill(admin, second)
        store.create_key(key("k2"))
        assert backend_pid(store) != second
        assert store.get_key("k2") == key("k2")
        assert store.version() == v + 1
    finally:
        store.close()


def test_postgres_never_replays_a_write_that_was_sent(admin: psycopg.Connection, pg_schema: str) -> None:
    store = PostgresKeyStore(PG_URL, schema=pg_schema)
    try:
        v = store.version()
        # The connection dies in the middle of a write's transaction: the outcome is
        # the caller's problem, so it is raised rather than retried.
        with pytest.raises(psycopg.OperationalError):
            store._write("SELECT pg_terminate_backend(pg_backend_pid())", ())
        # The next call gets a fresh connection; the rolled-back transaction left no trace.
        assert store.version() == v
        assert store.list_keys() == []
    finally:
        store.close()


def test_postgres_schema_name_is_quoted(admin: psycopg.Connection) -> None:
    schema = f"T-{uuid4().hex[:8]}; x"
    try:
        store = PostgresKeyStore(PG_URL, schema=schema)
        try:
            store.create_key(key("k1"))
            assert store.get_key("k1") == key("k1")
        finally:
            store.close()
        assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (1,)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_postgres_store_refuses_calls_after_close(pg_schema: str) -> None:
    store = PostgresKeyStore(PG_URL, schema=pg_schema)
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.version()
