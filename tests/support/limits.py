"""Helpers for rate-limit tests: keys with limits made through the admin API,
waiting until every edge knows them, and firing requests at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from tests.support.stack import Stack


def create_key(stack: Stack, edges: list[str], **fields: Any) -> str:
    """A new key with these limits; returns its secret once every edge accepts it."""
    return create_key_record(stack, edges, **fields)[0]


def create_key_record(stack: Stack, edges: list[str], **fields: Any) -> tuple[str, str]:
    """Like create_key, returning (secret, key id)."""
    body = {"name": f"limits-{uuid.uuid4().hex[:6]}", **fields}
    reply = httpx.post(f"{stack.url}/v1/keys", json=body, headers=stack.admin_headers(), timeout=10)
    assert reply.status_code == 200, reply.text
    secret = str(reply.json()["key"])
    for edge in edges:
        wait_until_known(edge, secret)
    return secret, str(reply.json()["id"])


def create_project(stack: Stack, **fields: Any) -> str:
    project_id = f"p-{uuid.uuid4().hex[:8]}"
    reply = httpx.post(
        f"{stack.url}/v1/projects", json={"id": project_id, **fields}, headers=stack.admin_headers(), timeout=10
    )
    assert reply.status_code == 200, reply.text
    return project_id


def wait_until_known(edge: str, secret: str, timeout: float = 10.0) -> None:
    # An empty chat body: 400 once the key authenticates, 401 before. It stops before
    # the rate-limit check, so waiting consumes nothing.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = httpx.post(f"{edge}/v1/chat/completions", json={}, headers=auth(secret), timeout=5)
        if reply.status_code == 400:
            return
        assert reply.status_code == 401, reply.text
        time.sleep(0.05)
    raise AssertionError(f"{edge} never learned the new key")


def auth(secret: str, ip: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret}"}
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    return headers


def chat_body(max_tokens: int = 5, model: str = "demo-chat") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": max_tokens}


async def fire(requests: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]) -> list[httpx.Response]:
    """Send (method, url, json, headers) requests all at once."""
    timeout = 60.0
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=len(requests) + 10)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return await asyncio.gather(
            *(client.request(method, url, json=body, headers=headers) for method, url, body, headers in requests)
        )
