"""The catalog at run time: reloads under traffic, and keys kept in PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from services.catalog.settings import DEFAULT_CONFIG
from tests.support.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
PG_URL = "postgresql://127.0.0.1:5432/test"


def _model_ids(stack: Stack) -> set[str]:
    return {m["id"] for m in httpx.get(f"{stack.base_url}/models", headers=stack.headers()).json()["data"]}


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    config = tmp_path / "catalog.yaml"
    config.write_text(DEFAULT_CONFIG.read_text())
    stack = start_stack(
        tmp_path / "data",
        config=config,
        env={"INTERLOCK_CATALOG_CONFIG_POLL_SECONDS": "0.2", "INTERLOCK_DEMO_TOKEN_DELAY_MS": "40"},
    )
    yield stack, config
    stop_stack(stack)


def test_edit_reloads_without_dropping_streams_and_bad_edit_keeps_old(reloadable: tuple[Stack, Path]) -> None:
    stack, config = reloadable
    assert "demo-chat-2" not in _model_ids(stack)
    document = yaml.safe_load(config.read_text())
    clone = next(m for m in document["models"] if m["id"] == "demo-chat")
    document["models"].append({**clone, "id": "demo-chat-2"})

    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", headers=stack.headers(),
        json={"model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "a long answer"}]},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        config.write_text(yaml.safe_dump(document))  # reload while the stream is in flight
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert _wait(lambda: "demo-chat-2" in _model_ids(stack), 5)
    served = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(),
        json={"model": "demo-chat-2", "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert served.status_code == 200

    config.write_text("models: [this is not: valid")
    assert _wait(lambda: "catalog reload failed, keeping the previous catalog" in stack.logs(), 5)
    assert "demo-chat-2" in _model_ids(stack)  # the old catalog is still served


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"e2e_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_keys_in_postgresql(tmp_path: Path, pg_schema: str) -> None:
    env = {"INTERLOCK_CATALOG_DATABASE_URL": PG_URL, "INTERLOCK_CATALOG_DATABASE_SCHEMA": pg_schema}
    stack = start_stack(tmp_path / "data", env=env)
    try:
        created = httpx.post(
            f"{stack.base_url}/keys", headers=stack.admin_headers(), json={"name": "pg", "models": ["demo-*"]}
        ).json()
        key = {"Authorization": f"Bearer {created['key']}"}
        body = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}
        assert _wait(
            lambda: httpx.post(f"{stack.base_url}/chat/completions", headers=key, json=body).status_code == 200, 3
        )
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            row = conn.execute(
                f'SELECT secret_hash, masked FROM "{pg_schema}".api_keys WHERE id = %s', (created["id"],)
            ).fetchone()
        assert row is not None and created["key"] not in row[0] and "********" in row[1]
        assert not (tmp_path / "data" / "catalog.db").exists()  # SQLite was not used
        httpx.delete(f"{stack.base_url}/keys/{created['id']}", headers=stack.admin_headers())
        assert _wait(
            lambda: httpx.post(f"{stack.base_url}/chat/completions", headers=key, json=body).status_code == 401, 1
        )
    finally:
        stop_stack(stack)
