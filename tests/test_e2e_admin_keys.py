"""The admin API end to end: projects, scoped keys, revocation across edges, secrecy."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.openai_schema import validate
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def second_edge(stack: Stack, tmp_path: Path) -> Iterator[str]:
    process, url = stack.start_extra_edge(tmp_path / "edge2.log")
    yield url
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def admin(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{stack.base_url}{path}", headers=stack.admin_headers(), timeout=30, **kwargs)  # type: ignore[arg-type]


def chat(url: str, key: str, model: str = "demo-chat") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={"model": model, "messages": HI}
    )


def test_scoped_key_lifecycle_across_two_edges(stack: Stack, second_edge: str) -> None:
    project = admin(stack, "POST", "/projects", json={"name": "Search Team"})
    assert project.status_code == 200, project.text
    assert project.json()["project"]["id"] == "search-team"
    created = admin(
        stack, "POST", "/keys",
        json={"name": "ci", "project": "search-team", "models": ["demo-*"], "plan": "developer",
              "budget_usd": 5, "budget_period": "monthly"},
    )  # fmt: skip
    assert created.status_code == 200, created.text
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert body["api_key"]["masked"] in (f"{key[3:7]}********{key[-4:]}",)
    assert body["api_key"]["project"] == "search-team" and body["api_key"]["budget_period"] == "monthly"

    # Edges learn of the new key through the watch stream, not per request.
    for url in (stack.url, second_edge):
        deadline = time.monotonic() + 2
        while chat(url, key).status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chat(url, key).status_code == 200
        denied = chat(url, key, "fake-chat")
        assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
        listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        validate("ListModelsResponse", listed)
        assert {m["id"] for m in listed["data"]} == {"demo-chat", "demo-instruct", "demo-embed"}
        entry = next(m for m in listed["data"] if m["id"] == "demo-embed")
        assert entry["dims"] == 256 and entry["pricing"]["input"] == 0.02 and entry["owned_by"]
        fallback = httpx.post(
            f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": "demo-chat", "messages": HI, "route": {"fallback": ["fake-chat"]}},
        )  # fmt: skip
        assert fallback.status_code == 403 and fallback.json()["error"]["param"] == "route.fallback"

    revoked = admin(stack, "DELETE", f"/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    started = time.monotonic()
    for url in (stack.url, second_edge):
        while chat(url, key).status_code != 401:
            assert time.monotonic() - started < 1.0, "revocation took more than a second"
            time.sleep(0.02)
    answer = chat(second_edge, key).json()
    assert answer["error"]["code"] == "invalid_api_key"


def test_rotate_update_get_and_list(stack: Stack) -> None:
    created = admin(stack, "POST", "/keys", json={"name": "rotating", "models": ["demo-chat"]}).json()
    old, key_id = created["key"], created["id"]
    rotated = admin(stack, "POST", f"/keys/{key_id}/rotate", json={}).json()
    new = rotated["key"]
    assert new != old and rotated["id"] == key_id
    deadline = time.monotonic() + 2
    while chat(stack.url, new).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat(stack.url, new).status_code == 200
    assert chat(stack.url, old).status_code == 401

    updated = admin(stack, "PATCH", f"/keys/{key_id}", json={"models": [], "requests_per_minute": 7})
    assert updated.status_code == 200, updated.text
    assert updated.json()["models"] == [] and updated.json()["requests_per_minute"] == 7
    assert updated.json()["name"] == "rotating"  # untouched fields stay
    fetched = admin(stack, "GET", f"/keys/{key_id}").json()
    assert fetched == updated.json()
    listing = admin(stack, "GET", "/keys", params={"project": "default"}).json()
    assert key_id in {k["id"] for k in listing["keys"]}
    assert all("secret_hash" not in k and "key" not in k for k in listing["keys"])
    assert admin(stack, "GET", "/keys/key_doesnotexist").status_code == 404


def test_secret_never_stored_logged_or_listed(stack: Stack) -> None:
    created = admin(stack, "POST", "/keys", json={"name": "secret-check"}).json()
    secret = created["key"]
    assert chat(stack.url, secret).status_code in (200, 401)  # the key may still be propagating
    listings = admin(stack, "GET", "/keys").text + admin(stack, "GET", f"/keys/{created['id']}").text
    assert secret not in listings
    assert stack.admin_key not in listings
    for path in stack.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret.encode() not in content, path
            assert secret[3:].encode() not in content, path
    # What the store holds is a keyed hash, not the secret.
    with sqlite3.connect(stack.data_dir / "catalog.db") as db:
        row = db.execute("SELECT secret_hash, masked FROM api_keys WHERE id = ?", (created["id"],)).fetchone()
    assert len(row[0]) == 64 and secret not in row[0] and "********" in row[1]
    # `interlock up` prints the bootstrap key to its operator once, by design; the services never log keys.
    service_logs = "\n".join(line for line in stack.logs().splitlines() if not line.startswith("interlock: "))
    for value in (secret, stack.api_key, stack.admin_key):
        assert value not in service_logs


ADMIN_ROUTES = [
    ("POST", "/keys", {"name": "x"}),
    ("GET", "/keys", None),
    ("GET", "/keys/key_x", None),
    ("PATCH", "/keys/key_x", {"name": "y"}),
    ("DELETE", "/keys/key_x", None),
    ("POST", "/keys/key_x/rotate", {}),
    ("POST", "/projects", {"name": "p"}),
    ("GET", "/projects", None),
    ("PATCH", "/projects/no-such-project", {"requests_per_minute": 1}),
]


@pytest.mark.parametrize(("method", "path", "payload"), ADMIN_ROUTES)
def test_non_admin_keys_get_403_and_strangers_401(stack: Stack, method: str, path: str, payload: object) -> None:
    kwargs = {"json": payload} if payload is not None else {}
    as_user = httpx.request(method, f"{stack.base_url}{path}", headers=stack.headers(), **kwargs)  # type: ignore[arg-type]
    assert as_user.status_code == 403, as_user.text
    validate("ErrorResponse", as_user.json())
    assert as_user.json()["error"]["type"] == "permission_error"
    anonymous = httpx.request(method, f"{stack.base_url}{path}", **kwargs)  # type: ignore[arg-type]
    assert anonymous.status_code == 401
    wrong = httpx.request(method, f"{stack.base_url}{path}", headers={"x-api-key": "il-nope"}, **kwargs)  # type: ignore[arg-type]
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "payload", "param"),
    [
        ("POST", "/keys", {"models": "demo-*"}, None),
        ("POST", "/keys", {"requests_per_minute": -1}, "requests_per_minute"),
        ("POST", "/keys", {"budget_usd": -5}, "budget_usd"),
        ("POST", "/keys", {"budget_usd": 5, "budget_period": "weekly"}, "budget_period"),
        ("POST", "/keys", {"plan": "platinum"}, "plan"),
        ("POST", "/keys", {"project": "no-such-project"}, "project"),
        ("POST", "/keys", {"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("POST", "/keys", {"expires_at": "tomorrow"}, None),
        ("POST", "/keys", {"unknown_field": 1}, None),
        ("PATCH", "/keys/bootstrap", {"models": [1, 2]}, "models"),
        ("POST", "/projects", {"id": "Not A Slug!"}, "id"),
        ("POST", "/projects", {}, "name"),
        ("GET", "/keys?include_revoked=maybe", None, "include_revoked"),
    ],
)
def test_malformed_admin_requests_are_400(
    stack: Stack, method: str, path: str, payload: object, param: str | None
) -> None:
    kwargs = {"json": payload} if payload is not None else {}
    response = admin(stack, method, path, **kwargs)
    assert response.status_code == 400, response.text
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert response.json()["error"]["param"] == param
    not_json = httpx.post(f"{stack.base_url}/keys", headers=stack.admin_headers(), content=b"{oops")
    assert not_json.status_code == 400


def test_projects_list_and_duplicates(stack: Stack) -> None:
    assert admin(stack, "POST", "/projects", json={"id": "dup-test", "name": "Dup"}).status_code == 200
    again = admin(stack, "POST", "/projects", json={"id": "dup-test", "name": "Dup"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "project_exists"
    ids = {p["id"] for p in admin(stack, "GET", "/projects").json()["projects"]}
    assert {"default", "dup-test"} <= ids


def test_expired_key_stops_working(stack: Stack) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    created = admin(stack, "POST", "/keys", json={"name": "short-lived", "expires_at": expires.isoformat()}).json()
    assert created["api_key"]["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    deadline = time.monotonic() + 2
    while chat(stack.url, created["key"]).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    expired = chat(stack.url, created["key"])
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
