"""Projects' shared limits and budgets: the admin API at the edge, and how they reach
every WatchKeys consumer (the edge's CatalogCache, other catalog replicas)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import grpc
import httpx
import psycopg
import pytest
from psycopg import sql

from interlock.catalog.v1 import catalog_pb2 as pb
from interlock.catalog.v1 import catalog_pb2_grpc
from services.catalog.server import build_server
from services.catalog.settings import DEFAULT_CONFIG, CatalogSettings
from services.common import keys
from services.common.catalog_cache import CatalogCache
from services.common.grpc_server import GrpcService
from tests.support.openai_schema import validate
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
PG_URL = os.environ.get("INTERLOCK_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
PROPAGATION_SECONDS = 2.0


def admin(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{stack.base_url}{path}", headers=stack.admin_headers(), timeout=30, **kwargs)  # type: ignore[arg-type]


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def create_project(stack: Stack, **fields: object) -> dict[str, object]:
    answer = admin(stack, "POST", "/projects", json=fields)
    assert answer.status_code == 200, answer.text
    project: dict[str, object] = answer.json()["project"]
    return project


async def eventually(predicate: Callable[[], bool], seconds: float = PROPAGATION_SECONDS) -> float:
    """Wait until predicate holds; how long it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"not true within {seconds}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# -- the admin API at the edge ---------------------------------------------------------------


def test_create_update_and_list_project_limits(stack: Stack) -> None:
    project_id = unique("limits")
    project = create_project(
        stack, id=project_id, name="Limits", requests_per_minute=120, tokens_per_minute=40_000, budget_usd=25
    )
    # int64 fields are decimal strings in proto3 JSON (as Envoy's transcoder writes them too).
    assert project["requests_per_minute"] == 120 and project["tokens_per_minute"] == 40000
    assert project["budget_usd"] == 25 and project["budget_period"] == "total"  # the default period
    assert project["name"] == "Limits" and project["created_at"]

    # PATCH changes only what it names; the answer is the project itself.
    updated = admin(
        stack, "PATCH", f"/projects/{project_id}", json={"tokens_per_minute": 5000, "budget_period": "monthly"}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json() == {**project, "tokens_per_minute": 5000, "budget_period": "monthly"}

    renamed = admin(stack, "PATCH", f"/projects/{project_id}", json={"name": " Renamed ", "requests_per_minute": 0})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {**updated.json(), "name": "Renamed", "requests_per_minute": 0}

    # A new amount keeps the period; no budget means no period.
    raised = admin(stack, "PATCH", f"/projects/{project_id}", json={"budget_usd": 40.5}).json()
    assert raised["budget_usd"] == 40.5 and raised["budget_period"] == "monthly"
    cleared = admin(stack, "PATCH", f"/projects/{project_id}", json={"budget_usd": 0}).json()
    assert cleared["budget_usd"] == 0 and cleared["budget_period"] == ""
    assert admin(stack, "PATCH", f"/projects/{project_id}", json={}).json() == cleared

    listed = {p["id"]: p for p in admin(stack, "GET", "/projects").json()["projects"]}
    assert listed[project_id] == cleared
    assert listed["default"]["requests_per_minute"] == 0 and listed["default"]["budget_period"] == ""


def test_project_without_limits_has_none(stack: Stack) -> None:
    plain = create_project(stack, name=unique("Plain"))
    assert (plain["requests_per_minute"], plain["tokens_per_minute"]) == (0, 0)
    assert (plain["budget_usd"], plain["budget_period"]) == (0, "")
    # A period without an amount is no cap, as for keys.
    no_cap = create_project(stack, name=unique("No cap"), budget_period="monthly")
    assert (no_cap["budget_usd"], no_cap["budget_period"]) == (0, "")
    monthly = create_project(stack, name=unique("Monthly"), budget_usd=3, budget_period="monthly")
    assert (monthly["budget_usd"], monthly["budget_period"]) == (3, "monthly")


def test_updating_an_unknown_project_is_404(stack: Stack) -> None:
    missing = admin(stack, "PATCH", "/projects/no-such-project", json={"requests_per_minute": 5})
    assert missing.status_code == 404, missing.text
    validate("ErrorResponse", missing.json())
    error = missing.json()["error"]
    assert error["type"] == "not_found_error" and error["code"] == "project_not_found" and error["param"] == "id"
    assert "no-such-project" in error["message"]
    assert "no-such-project" not in {p["id"] for p in admin(stack, "GET", "/projects").json()["projects"]}


@pytest.fixture(scope="module")
def target(stack: Stack) -> str:
    """A project of its own for requests that must be refused (never the shared default)."""
    project_id = unique("refusals")
    create_project(stack, id=project_id, name="Refusals", requests_per_minute=7, budget_usd=2)
    return project_id


@pytest.mark.parametrize(
    ("method", "payload", "param"),
    [
        ("POST", {"requests_per_minute": -1}, "requests_per_minute"),
        ("POST", {"tokens_per_minute": -5}, "tokens_per_minute"),
        ("POST", {"budget_usd": -1}, "budget_usd"),
        ("POST", {"budget_usd": "NaN"}, "budget_usd"),
        ("POST", {"budget_usd": 5, "budget_period": "weekly"}, "budget_period"),
        ("POST", {"requests_per_minute": "lots"}, None),
        ("PATCH", {"requests_per_minute": -1}, "requests_per_minute"),
        ("PATCH", {"tokens_per_minute": -1}, "tokens_per_minute"),
        ("PATCH", {"budget_usd": -0.01}, "budget_usd"),
        ("PATCH", {"budget_usd": "Infinity"}, "budget_usd"),
        ("PATCH", {"budget_period": "daily"}, "budget_period"),
        ("PATCH", {"name": "   "}, "name"),
        ("PATCH", {"name": "n" * 201}, "name"),
        ("PATCH", {"burst": 3}, None),
        ("PATCH", {"id": 5}, None),
    ],
)
def test_bad_limits_are_400_and_change_nothing(
    stack: Stack, target: str, method: str, payload: dict[str, object], param: str | None
) -> None:
    before = admin(stack, "GET", "/projects").json()["projects"]
    if method == "POST":
        response = admin(stack, "POST", "/projects", json={"name": "refused", **payload})
    else:
        response = admin(stack, "PATCH", f"/projects/{target}", json=payload)
    assert response.status_code == 400, response.text
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert response.json()["error"]["param"] == param
    assert admin(stack, "GET", "/projects").json()["projects"] == before


# -- WatchKeys: every message carries every project ------------------------------------------


async def test_edge_catalog_cache_sees_new_project_limits_within_a_second_or_two(stack: Stack) -> None:
    channel = grpc.aio.insecure_channel(stack.service_addr("catalog"))
    cache = CatalogCache(channel, watch_keys=True)
    try:
        await cache.start(10)
        assert "default" in cache.projects and cache.keys_by_hash
        project_id = unique("watched")
        async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.admin_headers(), timeout=30) as http:
            created = await http.post("/projects", json={"id": project_id, "name": "Watched"})
            assert created.status_code == 200, created.text
            await eventually(lambda: project_id in cache.projects)
            assert cache.projects[project_id].requests_per_minute == 0

            limits = {
                "requests_per_minute": 30,
                "tokens_per_minute": 900,
                "budget_usd": 1.5,
                "budget_period": "monthly",
            }
            updated = await http.patch(f"/projects/{project_id}", json=limits)
            assert updated.status_code == 200, updated.text
            await eventually(lambda: cache.projects[project_id].requests_per_minute == 30)
            seen = cache.projects[project_id]
            assert (seen.tokens_per_minute, seen.budget_usd, seen.budget_period) == (900, 1.5, "monthly")
            assert seen.name == "Watched"

            # A key change still carries the projects: the set is replaced, never emptied.
            made = await http.post("/keys", json={"name": "watch-check", "project": project_id})
            assert made.status_code == 200, made.text
            await eventually(lambda: any(k.id == made.json()["id"] for k in cache.keys_by_hash.values()))
            assert cache.projects[project_id] == seen and "default" in cache.projects
    finally:
        await cache.close()
        await channel.close(grace=None)


async def test_watch_keys_pushes_the_full_project_set_on_project_changes(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("catalog")) as channel:
        stream = catalog_pb2_grpc.CatalogServiceStub(channel).WatchKeys(pb.WatchKeysRequest())
        first = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(first, pb.WatchKeysResponse)
        assert first.reset and first.keys and "default" in {p.id for p in first.projects}

        project_id = unique("pushed")
        async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.admin_headers(), timeout=30) as http:
            assert (await http.post("/projects", json={"id": project_id, "name": "Pushed"})).status_code == 200
            deadline = time.monotonic() + PROPAGATION_SECONDS
            while True:
                message = await asyncio.wait_for(stream.read(), max(0.01, deadline - time.monotonic()))
                assert isinstance(message, pb.WatchKeysResponse)
                if project_id in {p.id for p in message.projects}:
                    break
        # The whole set, not just the change: everything the first message had is still there.
        assert message.reset and {p.id for p in first.projects} < {p.id for p in message.projects}
        assert {k.id for k in first.keys} <= {k.id for k in message.keys}
        stream.cancel()


# -- catalog replicas sharing one database ----------------------------------------------------

ADMIN_KEY = "il-admin-replicas"
PEPPER = b"replica-test-pepper"


def catalog_settings(database: Path, database_url: str = "", schema: str = "interlock") -> CatalogSettings:
    return CatalogSettings(
        listen="127.0.0.1:0",
        config_path=DEFAULT_CONFIG,
        database=database,
        database_url=database_url,
        database_schema=schema,
        admin_key_hash=keys.hash_secret(ADMIN_KEY, PEPPER),
        keys_poll_seconds=0.1,
        config_poll_seconds=60,
        key_pepper=PEPPER,
        bootstrap_key="",
        provider_env={},
        grace_seconds=1,
        log_level="warning",
    )


@pytest.fixture(params=["sqlite", "postgres"])
def replica_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogSettings]:
    if request.param == "sqlite":
        yield catalog_settings(tmp_path / "shared.db")
        return
    schema = f"replicas_{uuid4().hex[:12]}"
    try:
        yield catalog_settings(tmp_path / "unused.db", PG_URL, schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
async def two_replicas(replica_settings: CatalogSettings) -> AsyncIterator[tuple[GrpcService, GrpcService]]:
    first = await build_server(replica_settings)
    await first.start()
    second = await build_server(replica_settings)
    await second.start()
    try:
        yield first, second
    finally:
        await second.stop(0)
        await first.stop(0)


async def test_a_project_update_on_one_replica_reaches_the_others_watchers(
    two_replicas: tuple[GrpcService, GrpcService],
) -> None:
    writer, reader = two_replicas
    auth = (("authorization", f"Bearer {ADMIN_KEY}"),)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{writer.port}") as writer_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{reader.port}") as reader_channel,
    ):
        admin_stub = catalog_pb2_grpc.AdminServiceStub(writer_channel)
        cache = CatalogCache(reader_channel, watch_keys=True)
        try:
            await cache.start(10)
            assert set(cache.projects) == {"default"}
            await admin_stub.CreateProject(
                pb.CreateProjectRequest(id="team", name="Team", tokens_per_minute=100), metadata=auth
            )
            await eventually(lambda: "team" in cache.projects)
            assert cache.projects["team"].tokens_per_minute == 100

            answer = await admin_stub.UpdateProject(
                pb.UpdateProjectRequest(id="team", requests_per_minute=12, budget_usd=8), metadata=auth
            )
            assert answer.project.budget_period == "total" and answer.project.tokens_per_minute == 100
            await eventually(lambda: cache.projects["team"].requests_per_minute == 12)
            assert cache.projects["team"] == answer.project

            # Over gRPC the errors carry their codes too.
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await admin_stub.UpdateProject(pb.UpdateProjectRequest(id="nope", name="x"), metadata=auth)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as negative:
                await admin_stub.UpdateProject(pb.UpdateProjectRequest(id="team", tokens_per_minute=-1), metadata=auth)
            assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await admin_stub.UpdateProject(pb.UpdateProjectRequest(id="team", tokens_per_minute=1))
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert cache.projects["team"] == answer.project
        finally:
            await cache.close()
