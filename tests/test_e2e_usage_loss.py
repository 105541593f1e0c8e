"""Acceptance: no usage event is lost or doubled when the ledger goes away under load.

The whole stack runs; a load of chat requests keeps going while the usage service is
killed (test 1) or its PostgreSQL server is stopped (test 2), and comes back. Every
client request must still succeed, and afterwards the ledger must hold exactly one
event per request: the router spooled what it could not deliver and replayed it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import yaml

from services.common.spool import Spool
from tests.support.postgres_server import PostgresServer
from tests.support.stack import MODES, Stack, free_port, start_stack, stop_stack

pytestmark = pytest.mark.e2e
TOTAL = 300
WORKERS = 8
HI = [{"role": "user", "content": "hi"}]
CATALOG = {
    "providers": {"demo": {"kind": "demo"}},
    "models": [
        {"id": "demo-chat", "type": "chat", "capabilities": ["chat"], "pricing": {"input": 0.1, "output": 0.4},
         "deployments": [{"provider": "demo", "model": "demo-chat"}]},
    ],
    "plans": [{"id": "roomy", "requests_per_minute": 100000, "tokens_per_minute": 1000000000, "burst": 100000}],
    "default_plan": "roomy",
}  # fmt: skip


class Load:
    """Chat requests through the official SDK from a pool of threads, released in steps."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(WORKERS)
        self._futures: list[Future[tuple[str, int, str]]] = []
        self._lock = threading.Lock()
        self.completed = 0

    def _client(self) -> openai.OpenAI:
        if not hasattr(self._local, "client"):
            self._local.client = openai.OpenAI(
                base_url=self._stack.base_url, api_key=self._stack.api_key, max_retries=0, timeout=30
            )
        return self._local.client  # type: ignore[no-any-return]

    def _one(self) -> tuple[str, int, str]:
        rid = "loss-" + uuid.uuid4().hex
        try:
            raw = self._client().chat.completions.with_raw_response.create(
                model="demo-chat", messages=HI, extra_headers={"X-Request-Id": rid}
            )
            result = (rid, raw.http_response.status_code, raw.headers.get("x-request-id", ""))
        except openai.APIStatusError as exc:
            result = (rid, exc.status_code, exc.response.headers.get("x-request-id", ""))
        except openai.APIError as exc:
            result = (rid, 0, repr(exc))
        with self._lock:
            self.completed += 1
        return result

    def submit(self, count: int) -> None:
        self._futures += [self._pool.submit(self._one) for _ in range(count)]

    def results(self) -> list[tuple[str, int, str]]:
        try:
            return [future.result(timeout=60) for future in self._futures]
        finally:
            self._pool.shutdown(cancel_futures=True)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def spooled_rows(stack: Stack) -> int:
    """Events in the routers' spools (the router's own, or one per co-located edge worker),
    read through separate read-only connections."""
    paths = stack.spool_paths()
    assert paths, "no spool file"
    total = 0
    for path in paths:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            total += int(conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
    return total


def ledger_up(stack: Stack) -> bool:
    try:
        stack.count_events(request_id="probe")
    except Exception:
        return False
    return True


def run_load_across_outage(
    stack: Stack, outage: Callable[[], None], recovery: Callable[[], None], *, spooled: int = 1
) -> Load:
    """Half the load, the outage while requests are in flight, more load until the router
    has spooled at least `spooled` events, the recovery, then the rest."""
    load = Load(stack)
    load.submit(TOTAL // 2)
    wait_for(lambda: load.completed >= TOTAL // 3, "the first requests")
    outage()
    load.submit(TOTAL // 3)
    wait_for(lambda: spooled_rows(stack) >= spooled, "events to be spooled")
    recovery()
    load.submit(TOTAL - TOTAL // 2 - TOTAL // 3)
    return load


def assert_exactly_one_event_each(stack: Stack, load: Load) -> None:
    results = load.results()
    assert len(results) == TOTAL
    failed = [(rid, status, detail) for rid, status, detail in results if status != 200 or detail != rid]
    assert failed == [], failed[:5]
    ids = [rid for rid, _, _ in results]
    counts = stack.events_per_request(ids, timeout=30)
    assert {rid: n for rid, n in counts.items() if n != 1} == {}
    wait_for(lambda: spooled_rows(stack) == 0, "the spool to drain")
    assert "usage service did not take events" in stack.logs()  # the outage really hit the router
    assert "usage spool drained" in stack.logs()


def _start(tmp_path: Path, env: dict[str, str], mode: str | None = None) -> Stack:
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump(CATALOG))
    return start_stack(
        tmp_path / "data",
        config=config,
        env={"INTERLOCK_DEMO_TOKEN_DELAY_MS": "1", "INTERLOCK_LOG_LEVEL": "info", **env},
        mode=mode,
    )


# The ledger kill test is in the core subset that runs in both modes.
@pytest.fixture(params=MODES)
def own_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    stack = _start(tmp_path, {}, request.param)
    yield stack
    assert stop_stack(stack) == 0, stack.logs()


def test_killed_usage_service_loses_no_events(own_stack: Stack) -> None:
    stack = own_stack
    killed = stack.pid("usage")

    def back() -> None:
        # The supervisor restarts it at once (stack.json names the new process once it is healthy),
        # so the spool may be drained again soon after it first holds anything.
        wait_for(lambda: stack.pid("usage") != killed and ledger_up(stack), "the usage service to be restarted")

    load = run_load_across_outage(stack, lambda: os.kill(killed, signal.SIGKILL), back)
    assert_exactly_one_event_each(stack, load)
    assert "usage died" in stack.logs()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_stack(tmp_path: Path, postgres: PostgresServer) -> Iterator[Stack]:
    stack = _start(tmp_path, {"INTERLOCK_USAGE_DATABASE_URL": postgres.url})
    yield stack
    assert stop_stack(stack) == 0, stack.logs()


def test_stopped_postgres_loses_no_events(pg_stack: Stack, postgres: PostgresServer) -> None:
    stack = pg_stack
    usage = stack.pid("usage")
    # We decide when the database comes back: let a good part of the load pile up in the spool first.
    load = run_load_across_outage(stack, postgres.stop, postgres.start, spooled=TOTAL // 6)
    assert_exactly_one_event_each(stack, load)
    assert stack.pid("usage") == usage  # the service stayed up; only its database went away


def test_a_second_router_on_the_same_spool_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "router.db"
    held = Spool.open(path)  # as a first router replica would
    try:
        env = {
            **os.environ,
            "INTERLOCK_ROUTER_SPOOL_PATH": str(path),
            "INTERLOCK_ROUTER_LISTEN": f"127.0.0.1:{free_port()}",
            "INTERLOCK_CATALOG_ADDR": f"127.0.0.1:{free_port()}",  # never reached: the spool is checked first
        }
        done = subprocess.run(
            [sys.executable, "-m", "services.router"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        held.close()
    assert done.returncode == 2, done.stderr
    assert f"router: invalid configuration: spool {path} is in use by another process" in done.stderr
