"""The KeyStore contract, run against both backends: SQLite in a temporary file and
PostgreSQL in a throwaway schema on a real server (INTERLOCK_TEST_POSTGRES_URL,
default postgresql://127.0.0.1:5432/test). PostgreSQL is a required service of the
suite (.ci/run starts it): without it these tests fail, they do not skip.
SQLite migrations follow the contract suite; PostgreSQL-only behaviour is in
test_keystore_postgres.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from services.catalog.store import DuplicateError, KeyRecord, KeyStore, ProjectRecord
from services.catalog.store.postgres import PostgresKeyStore
from services.catalog.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from services.catalog.store.sqlite import SqliteKeyStore
from tests.support.keystore import PG_URL, key

# -- the two backends ------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    open_store: Callable[[], KeyStore]
    # {table: [column, ...]} for every table the store owns.
    columns: Callable[[], dict[str, list[str]]]
    opened: list[KeyStore] = field(default_factory=list)

    def open(self) -> KeyStore:
        """Another store on the same database, as a second catalog replica would open it."""
        store = self.open_store()
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def sqlite_backend(path: Path) -> Backend:
    def columns() -> dict[str, list[str]]:
        with closing(sqlite3.connect(path)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: [r[1] for r in db.execute("SELECT * FROM pragma_table_info(?)", (t,))] for t in tables}

    return Backend("sqlite", lambda: SqliteKeyStore(path), columns)


def postgres_backend(admin: psycopg.Connection, schema: str) -> Backend:
    def columns() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for table, column in admin.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s", (schema,)
        ):
            found.setdefault(table, []).append(column)
        return found

    return Backend("postgres", lambda: PostgresKeyStore(PG_URL, schema=schema), columns)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = sqlite_backend(tmp_path / "keys.db")
    else:
        made = postgres_backend(request.getfixturevalue("admin"), request.getfixturevalue("pg_schema"))
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def store(backend: Backend) -> KeyStore:
    """A fresh, migrated store."""
    return backend.open()


# -- the contract ------------------------------------------------------------------------------


def test_default_project_exists_after_migration(store: KeyStore) -> None:
    default = store.get_project("default")
    assert default is not None and default.name == "Default" and default.created_at > 1_600_000_000
    assert [p.id for p in store.list_projects()] == ["default"]


def test_create_get_and_list_projects(store: KeyStore) -> None:
    store.create_project(ProjectRecord(id="b", name="Bee", created_at=20))
    store.create_project(ProjectRecord(id="A", name="Upper", created_at=30))
    store.create_project(ProjectRecord(id="a", name="Ay", created_at=10))
    assert store.get_project("b") == ProjectRecord(id="b", name="Bee", created_at=20)
    assert store.get_project("missing") is None
    # Ordered by id, byte-wise on both backends.
    assert [p.id for p in store.list_projects()] == ["A", "a", "b", "default"]


def test_duplicate_project_is_rejected(store: KeyStore) -> None:
    store.create_project(ProjectRecord(id="p", name="P", created_at=1))
    with pytest.raises(DuplicateError):
        store.create_project(ProjectRecord(id="p", name="other", created_at=2))
    with pytest.raises(DuplicateError):
        store.create_project(ProjectRecord(id="default", name="again", created_at=2))
    assert store.get_project("p") == ProjectRecord(id="p", name="P", created_at=1)


def test_project_round_trips_its_limits(store: KeyStore) -> None:
    record = ProjectRecord(
        id="limited", name="Limited", created_at=1_700_000_000, requests_per_minute=120,
        tokens_per_minute=50_000, budget_usd=99.75, budget_period="monthly",
    )  # fmt: skip
    store.create_project(record)
    assert store.get_project("limited") == record
    assert store.list_projects() == [store.get_project("default"), record]
    # No limits given: none stored.
    plain = store.get_project("default")
    assert plain is not None
    assert (plain.requests_per_minute, plain.tokens_per_minute, plain.budget_usd, plain.budget_period) == (0, 0, 0, "")


def test_update_project_changes_only_the_given_fields(store: KeyStore) -> None:
    before = ProjectRecord(
        id="p", name="P", created_at=5, requests_per_minute=10, budget_usd=1.0, budget_period="total"
    )
    store.create_project(before)
    v = store.version()
    changes: dict[str, object] = {"tokens_per_minute": 7_000, "budget_usd": 2.5, "budget_period": "monthly"}
    expected = ProjectRecord(**{**before.__dict__, **changes})  # type: ignore[arg-type]
    assert store.update_project("p", changes) == expected
    assert store.get_project("p") == expected
    assert store.version() > v
    renamed = store.update_project("p", {"name": "Renamed", "requests_per_minute": 0})
    assert renamed == ProjectRecord(**{**expected.__dict__, "name": "Renamed", "requests_per_minute": 0})
    assert store.update_project("p", {}) == renamed  # nothing to change: just the record
    # Other projects are untouched.
    default = store.get_project("default")
    assert default is not None and default.requests_per_minute == 0 and default.name == "Default"


def test_update_project_unknown_id_and_bad_column(store: KeyStore) -> None:
    assert store.update_project("missing", {"requests_per_minute": 1}) is None
    assert store.update_project("missing", {}) is None
    assert store.get_project("missing") is None
    for column in ("id", "created_at", "burst", "name; DROP TABLE projects"):
        with pytest.raises(ValueError, match="not updatable"):
            store.update_project("default", {column: 1})
    default = store.get_project("default")
    assert default is not None and default.requests_per_minute == 0


def test_key_round_trips_every_field(store: KeyStore) -> None:
    record = KeyRecord(
        id="k1", name="full", project="default", secret_hash="h" * 64, masked="0a0e****94c1",
        models=["demo-chat", "modèle/ü"], plan="pro", requests_per_minute=60, tokens_per_minute=10_000,
        burst=5, budget_usd=12.5, budget_period="monthly", expires_at=4_000_000_000, revoked=True,
        created_at=1_700_000_123,
    )  # fmt: skip
    store.create_key(record)
    assert store.get_key("k1") == record
    assert store.get_key("missing") is None


def test_list_keys_filters_by_project_and_revocation(store: KeyStore) -> None:
    store.create_project(ProjectRecord(id="p2", name="Two", created_at=1))
    store.create_key(key("k3", created_at=30))
    store.create_key(key("k1", created_at=10))
    store.create_key(key("k2", project="p2", created_at=20, revoked=True))
    store.create_key(key("k0", project="p2", created_at=20))
    assert [k.id for k in store.list_keys()] == ["k1", "k0", "k2", "k3"]  # by created_at, then id
    assert [k.id for k in store.list_keys(project="p2")] == ["k0", "k2"]
    assert [k.id for k in store.list_keys(include_revoked=False)] == ["k1", "k0", "k3"]
    assert [k.id for k in store.list_keys("p2", include_revoked=False)] == ["k0"]
    assert store.list_keys(project="nobody") == []


def test_duplicate_key_id_or_secret_hash_is_rejected(store: KeyStore) -> None:
    store.create_key(key("k1", secret_hash="same"))
    with pytest.raises(DuplicateError):
        store.create_key(key("k1", secret_hash="different"))
    with pytest.raises(DuplicateError):
        store.create_key(key("k2", secret_hash="same"))
    assert [k.id for k in store.list_keys()] == ["k1"]
    # An update may not take another key's hash either.
    store.create_key(key("k3", secret_hash="third"))
    with pytest.raises(DuplicateError):
        store.update_key("k3", {"secret_hash": "same"})
    assert store.get_key("k3") == key("k3", secret_hash="third")


def test_update_key_changes_only_the_given_fields(store: KeyStore) -> None:
    before = key("k1", models=["a"], plan="free", requests_per_minute=10, budget_usd=1.0, budget_period="total")
    store.create_key(before)
    changes: dict[str, object] = {
        "name": "renamed", "models": ["b", "c"], "requests_per_minute": 99, "budget_usd": 7.25,
        "budget_period": "monthly", "expires_at": 4_100_000_000, "revoked": True,
        "secret_hash": "new-hash", "masked": "new-****",
    }  # fmt: skip
    updated = store.update_key("k1", changes)
    expected = KeyRecord(**{**before.__dict__, **changes})  # type: ignore[arg-type]
    assert updated == expected
    assert store.get_key("k1") == expected
    assert store.update_key("k1", {"plan": "pro"}) == KeyRecord(**{**expected.__dict__, "plan": "pro"})
    assert store.update_key("k1", {}) == store.get_key("k1")  # nothing to change: just the record


def test_update_key_unknown_id_and_bad_column(store: KeyStore) -> None:
    assert store.update_key("missing", {"name": "x"}) is None
    assert store.update_key("missing", {}) is None
    store.create_key(key("k1"))
    for column in ("id", "project", "created_at", "name; DROP TABLE api_keys"):
        with pytest.raises(ValueError, match="not updatable"):
            store.update_key("k1", {column: "x"})
    assert store.get_key("k1") == key("k1")


def test_version_grows_with_every_write_and_is_shared(backend: Backend, store: KeyStore) -> None:
    versions = [store.version()]

    def wrote() -> int:
        versions.append(store.version())
        assert versions[-1] > versions[-2]
        return versions[-1]

    store.create_project(ProjectRecord(id="p", name="P", created_at=1))
    wrote()
    store.create_key(key("k1"))
    wrote()
    store.update_key("k1", {"revoked": True})
    wrote()
    store.update_project("p", {"requests_per_minute": 5})
    seen = wrote()

    # Reads and rejected writes leave it alone.
    store.list_keys()
    store.get_key("k1")
    store.list_projects()
    with pytest.raises(DuplicateError):
        store.create_key(key("k1"))
    assert store.version() == seen

    # A second replica on the same database sees the same counter, and each sees the other's writes.
    other = backend.open()
    assert other.version() == seen
    other.create_key(key("k2"))
    assert store.version() > seen
    assert store.get_key("k2") == key("k2")
    store.update_key("k2", {"name": "from the first"})
    assert other.version() == store.version()
    assert other.get_key("k2") == key("k2", name="from the first")


def test_migrations_are_idempotent(backend: Backend, store: KeyStore) -> None:
    store.create_key(key("k1"))
    again = backend.open()
    third = backend.open()
    assert [p.id for p in third.list_projects()] == ["default"]
    assert again.get_key("k1") == key("k1")
    assert third.version() == store.version()


def test_no_column_could_hold_a_secret(backend: Backend, store: KeyStore) -> None:
    store.create_key(key("k1"))
    columns = backend.columns()
    assert {"api_keys", "projects", "changes"} <= set(columns)
    secretish = [
        f"{table}.{column}"
        for table, names in columns.items()
        for column in names
        if any(word in column.lower() for word in ("secret", "token", "plain", "key"))
    ]
    # tokens_per_minute is a rate limit, not a token.
    assert sorted(secretish) == ["api_keys.secret_hash", "api_keys.tokens_per_minute", "projects.tokens_per_minute"]


# -- SQLite only -------------------------------------------------------------------------------


def test_sqlite_upgrades_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(SQLITE_MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO api_keys (id, name, project, secret_hash, masked, models, plan, requests_per_minute,"
            " revoked, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old", "Old key", "default", "old-hash", "old-****", '["demo-chat"]', "free", 30, 1, 5, 1_600_000_000),
        )
    db.close()

    store = SqliteKeyStore(path)
    try:
        assert store.get_key("old") == KeyRecord(
            id="old", name="Old key", project="default", secret_hash="old-hash", masked="old-****",
            models=["demo-chat"], plan="free", requests_per_minute=30, revoked=True, expires_at=5,
            created_at=1_600_000_000, tokens_per_minute=0, burst=0, budget_usd=0.0, budget_period="",
        )  # fmt: skip
        assert [p.id for p in store.list_projects()] == ["default"]
        v = store.version()
        store.update_key("old", {"burst": 3})
        assert store.version() > v
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    db.close()


def test_sqlite_upgrades_a_version_2_database_keeping_its_projects(tmp_path: Path) -> None:
    """A database written by the previous release: projects without limit columns."""
    path = tmp_path / "v2.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for script in SQLITE_MIGRATIONS[:2]:
            for statement in (s for s in script.split(";") if s.strip()):
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO projects (id, name, created_at) VALUES ('team', 'Team', 1600000000)")
        db.execute(
            "INSERT INTO api_keys (id, name, project, secret_hash, masked, created_at, requests_per_minute)"
            " VALUES ('k', 'K', 'team', 'k-hash', 'k-****', 1600000001, 9)"
        )
        assert "requests_per_minute" not in [r[1] for r in db.execute("PRAGMA table_info(projects)")]

    store = SqliteKeyStore(path)
    try:
        assert store.get_project("team") == ProjectRecord(id="team", name="Team", created_at=1_600_000_000)
        assert [p.id for p in store.list_projects()] == ["default", "team"]
        assert store.get_key("k") == key("k", name="K", project="team", secret_hash="k-hash", masked="k-****",
                                         created_at=1_600_000_001, requests_per_minute=9)  # fmt: skip
        updated = store.update_project("team", {"tokens_per_minute": 100, "budget_usd": 3.0, "budget_period": "total"})
        assert updated == ProjectRecord(
            id="team", name="Team", created_at=1_600_000_000, tokens_per_minute=100, budget_usd=3.0,
            budget_period="total",
        )  # fmt: skip
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    # Opening it again applies nothing twice.
    again = SqliteKeyStore(path)
    try:
        assert again.get_project("team") == updated
    finally:
        again.close()
