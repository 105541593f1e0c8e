"""Shared fixtures: one real stack (every service + the edge, as separate
processes) per test session in the default mode (co-located, two edge workers),
one in microservices mode for the core subset that runs in both, and a fake
OpenAI-compatible upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import openai
import psycopg
import pytest
from psycopg import sql

from tests.support.fake_gemini import FakeGemini
from tests.support.fake_openai import FakeOpenAI
from tests.support.keystore import PG_URL
from tests.support.stack import SESSION_WORKERS, Stack, free_port, stack_on_catalog

UPSTREAM_KEY = "sk-upstream-test-key"
GEMINI_KEY = "gemini-e2e-key"
DEMO_TOKEN_DELAY_MS = 25
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def gemini_fake() -> Iterator[FakeGemini]:
    """A fake Gemini API (generateContent and its stream) for the stacks that route to Gemini."""
    with FakeGemini(required_api_key=GEMINI_KEY) as fake:
        yield fake


@pytest.fixture
def gemini(gemini_fake: FakeGemini) -> Iterator[FakeGemini]:
    gemini_fake.reset()
    yield gemini_fake
    gemini_fake.reset()


@pytest.fixture
def upstream(fake_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The session's fake upstream, reset to defaults around each test."""
    fake_upstream.reset()
    fake_upstream.required_api_key = UPSTREAM_KEY
    yield fake_upstream
    fake_upstream.reset()
    fake_upstream.required_api_key = UPSTREAM_KEY


def catalog_for(fake: FakeOpenAI) -> dict[str, object]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    demo = {"provider": "demo"}
    chat = {"type": "chat", "capabilities": ["chat"]}
    return {
        "providers": {
            "demo": {"kind": "demo"},
            "fake": {
                "kind": "openai",
                "base_url": fake.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "timeout_seconds": 10,
            },
            "dead": {"kind": "openai", "base_url": dead, "timeout_seconds": 2},
            # Same fake, own breaker: for the test whose Retry-After keeps its deployment away.
            "fakeb": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_UPSTREAM_KEY"},
            "slow": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_UPSTREAM_KEY",
                     "timeout_seconds": 0.5},
            "nokey": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "INTERLOCK_TEST_NEVER_SET"},
        },
        "models": [
            {**chat, "id": "demo-chat", "context_window": 8192, "pricing": {"input": 0.1, "output": 0.4},
             "deployments": [{**demo, "model": "demo-chat"}]},
            {"id": "demo-instruct", "type": "completion", "pricing": {"input": 0.05, "output": 0.1},
             "deployments": [{**demo, "model": "demo-instruct"}]},
            {"id": "demo-embed", "type": "embedding", "dims": 256, "pricing": {"input": 0.02},
             "deployments": [{**demo, "model": "demo-embed"}]},
            {**chat, "id": "tiny-context", "context_window": 40, "deployments": [{**demo, "model": "demo-chat"}]},
            {**chat, "id": "fake-chat", "pricing": {"input": 1.0, "output": 2.0},
             "deployments": [{"provider": "fake", "model": "fake-model"}]},
            {"id": "fake-instruct", "type": "completion", "deployments": [{"provider": "fake", "model": "fake-model"}]},
            {"id": "fake-embed", "type": "embedding", "dims": 8,
             "deployments": [{"provider": "fake", "model": "fake-embed"}]},
            {**chat, "id": "dead-chat", "deployments": [{"provider": "dead", "model": "x"}]},
            {**chat, "id": "fakeb-chat", "deployments": [{"provider": "fakeb", "model": "fake-model"}]},
            {**chat, "id": "slow-chat", "deployments": [{"provider": "slow", "model": "fake-model"}]},
            {**chat, "id": "nokey-chat", "deployments": [{"provider": "nokey", "model": "x"}]},
        ],
        "profiles": [{"id": "router:fast", "strategy": "fast", "candidates": ["demo-chat"]}],
        # The session's own key has no plan, so it gets the default: roomy enough for the whole
        # suite, yet with every kind of limit, so each request goes through reserve and settle.
        # Tests of the limits themselves make keys of their own.
        "plans": [
            {"id": "developer", "requests_per_minute": 60, "tokens_per_minute": 60000, "burst": 120},
            {"id": "roomy", "requests_per_minute": 100000, "tokens_per_minute": 1000000000, "burst": 100000},
        ],
        "default_plan": "roomy",
    }  # fmt: skip


def _session_env() -> dict[str, str]:
    return {
        "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
        "INTERLOCK_DEMO_TOKEN_DELAY_MS": str(DEMO_TOKEN_DELAY_MS),
        "INTERLOCK_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        # Shared by many tests: keep failures from one test out of the next. The breaker and
        # backoff have their own tests with their own stacks.
        "INTERLOCK_ROUTER_BREAKER_FAILURES": "1000",
        "INTERLOCK_ROUTER_BACKOFF_BASE_MS": "5",
        "INTERLOCK_ROUTER_BACKOFF_MAX_MS": "20",
    }


@pytest.fixture(scope="session")
def colocated_stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> Iterator[Stack]:
    """The default mode: the router inside each of two edge workers sharing the port."""
    root = tmp_path_factory.mktemp("stack")
    catalog = catalog_for(fake_upstream)
    with stack_on_catalog(root, catalog, _session_env(), mode="colocated", workers=SESSION_WORKERS) as running:
        yield running


@pytest.fixture(scope="session")
def microservices_stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> Iterator[Stack]:
    """Started only when a test asks for it (tests.support.stack.stack_in_each_mode)."""
    root = tmp_path_factory.mktemp("microservices")
    with stack_on_catalog(root, catalog_for(fake_upstream), _session_env(), mode="microservices") as running:
        yield running


@pytest.fixture(scope="session")
def stack(colocated_stack: Stack) -> Stack:
    return colocated_stack


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def admin() -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test server."""
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_URL} (start it as .ci/run does): {exc}")
    with conn:
        yield conn


@pytest.fixture
def pg_schema(admin: psycopg.Connection) -> Iterator[str]:
    """A unique schema name, not yet created; dropped with everything in it afterwards."""
    schema = f"t_{uuid4().hex[:12]}"
    yield schema
    admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
