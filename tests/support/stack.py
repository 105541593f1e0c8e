"""Running the real stack (`interlock up`) for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.ports import free_port

STARTUP_SECONDS = 90.0
# interlock up's modes; the session stack runs the first (the default), with this many workers.
MODES = ("colocated", "microservices")
SESSION_WORKERS = 2


@dataclass
class Stack:
    url: str
    api_key: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    # The environment the stack was started with beyond the test process's own (provider keys...).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def layout(self) -> dict[str, object]:
        return json.loads((self.data_dir / "stack.json").read_text())  # type: ignore[no-any-return]

    def service_addr(self, name: str) -> str:
        services = self.layout["services"]
        assert isinstance(services, dict)
        return str(services[name])

    @property
    def mode(self) -> str:
        return str(self.layout["mode"])

    @property
    def workers(self) -> dict[str, str]:
        """Co-located mode: each edge worker's private URL; empty in microservices mode."""
        workers = self.layout.get("workers", {})
        assert isinstance(workers, dict)
        return {str(name): str(url) for name, url in workers.items()}

    def metrics_url(self, name: str) -> str:
        """The Prometheus scrape URL of a service, or of the edge ("edge"). In co-located
        mode the edge's is worker `edge`'s own (a scrape of the shared port could land on
        any worker), and the router's is the same page: the router runs in that process."""
        if name == "edge" or (name == "router" and self.workers):
            return f"{self.workers['edge']}/metrics" if self.workers else f"{self.url}/metrics"
        metrics = self.layout["metrics"]
        assert isinstance(metrics, dict)
        return str(metrics[name])

    @property
    def one_edge_url(self) -> str:
        """The URL of one edge process: worker `edge`'s own in co-located mode (whose /metrics
        metrics_url("edge") names), the edge's in microservices mode."""
        return self.workers.get("edge", self.url)

    def spool_paths(self) -> list[Path]:
        """The router's usage spool files: one per co-located edge worker, or the router's own."""
        return sorted(p for p in (self.data_dir / "spool").glob("*.db") if not p.stem.endswith("-scores"))

    def pid(self, name: str) -> int:
        pids = self.layout["pids"]
        assert isinstance(pids, dict)
        return int(pids[name])

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def start_extra_edge(
        self, log_path: Path, *, ratelimit_addr: str | None = None, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """A second edge process wired to this stack's services (or another ratelimit),
        as a second replica would be: in co-located mode with a router of its own."""
        port = free_port()
        pepper = (self.data_dir / "secrets" / "key_pepper").read_text().strip()
        child_env = {
            **os.environ,
            **self.env,
            "INTERLOCK_KEY_PEPPER": pepper,
            "INTERLOCK_CATALOG_ADDR": self.service_addr("catalog"),
            "INTERLOCK_ROUTER_ADDR": self.service_addr("router"),
            "INTERLOCK_RATELIMIT_ADDR": ratelimit_addr or self.service_addr("ratelimit"),
            "INTERLOCK_USAGE_ADDR": self.service_addr("usage"),
            "INTERLOCK_EDGE_PORT": str(port),
            "INTERLOCK_EDGE_MODE": self.mode,
            "INTERLOCK_LOG_LEVEL": "warning",
        }
        if self.mode == "colocated":
            child_env |= {
                "INTERLOCK_ROUTER_LISTEN": f"127.0.0.1:{free_port()}",
                "INTERLOCK_ROUTER_SPOOL_PATH": str(log_path.with_suffix(".spool.db")),
            }
        child_env |= env or {}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway"], env=child_env, stdout=log, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                time.sleep(0.1)
        process.kill()
        process.wait()
        raise RuntimeError(f"extra edge did not start:\n{log_path.read_text()}")

    def start_ratelimit(self, log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
        """Another ratelimit process (a replica, or one with other settings), reading
        budgets from this stack's usage ledger."""
        addr = env.get("INTERLOCK_RATELIMIT_LISTEN") or f"127.0.0.1:{free_port()}"
        child_env = {
            **os.environ,
            "INTERLOCK_RATELIMIT_LISTEN": addr,
            "INTERLOCK_USAGE_ADDR": self.service_addr("usage"),
            "INTERLOCK_LOG_LEVEL": "info",
            **env,
        }
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.ratelimit"], env=child_env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_grpc_health(addr, process, log_path)
        return process, addr

    def count_events(self, **filters: str) -> int:
        with grpc.insecure_channel(self.service_addr("usage")) as channel:
            stub = usage_pb2_grpc.UsageServiceStub(channel)
            return int(stub.CountEvents(usage_pb2.CountEventsRequest(**filters), timeout=5).count)

    def wait_for_events(self, expected: int, timeout: float = 10.0, **filters: str) -> int:
        """Events are batched off the request path: wait until the count settles at expected."""
        deadline = time.monotonic() + timeout
        count = self.count_events(**filters)
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.count_events(**filters)
        # Let a late extra event show itself, if there were one.
        time.sleep(0.3)
        return self.count_events(**filters)

    def events_per_request(self, request_ids: list[str], timeout: float = 10.0) -> dict[str, int]:
        """Wait until every id has an event, let late duplicates show, then count each."""
        deadline = time.monotonic() + timeout
        missing = list(request_ids)
        while missing and time.monotonic() < deadline:
            missing = [rid for rid in missing if self.count_events(request_id=rid) == 0]
            if missing:
                time.sleep(0.05)
        time.sleep(0.3)
        return {rid: self.count_events(request_id=rid) for rid in request_ids}

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_grpc_health(addr: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"{addr} did not become healthy:\n{log_path.read_text()}")


def start_stack(
    data_dir: Path,
    *,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    mode: str | None = None,
    workers: int | None = None,
) -> Stack:
    """`interlock up` on a free port; mode and workers default to its own defaults."""
    port = free_port()
    api_key = api_key or "il-test-" + os.urandom(16).hex()
    admin_key = "il-admin-" + os.urandom(16).hex()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "stack.log"
    args = [sys.executable, "-m", "services.cli.main", "up", "--port", str(port), "--data-dir", str(data_dir)]
    if config is not None:
        args += ["--config", str(config)]
    if mode is not None:
        args += ["--mode", mode]
    if workers is not None:
        args += ["--workers", str(workers)]
    child_env = {
        **os.environ,
        "INTERLOCK_API_KEY": api_key,
        "INTERLOCK_ADMIN_KEY": admin_key,
        "INTERLOCK_LOG_LEVEL": "warning",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"interlock up exited with {process.returncode}:\n{log_path.read_text()}")
        if (data_dir / "stack.json").exists():
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return Stack(url, api_key, admin_key, data_dir, process, log_path, env or {})
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"stack did not start within {STARTUP_SECONDS}s:\n{log_path.read_text()}")


def stop_stack(stack: Stack) -> int:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
    return stack.process.wait(30)


@contextlib.contextmanager
def stack_on_catalog(
    root: Path,
    catalog: Mapping[str, Any],
    env: dict[str, str] | None = None,
    *,
    mode: str | None = None,
    workers: int | None = None,
) -> Iterator[Stack]:
    """A stack serving this catalog, its files under root; it must stop cleanly afterwards."""
    config = root / "catalog.yaml"
    config.write_text(yaml.safe_dump(dict(catalog)))
    stack = start_stack(root / "data", config=config, env=env, mode=mode, workers=workers)
    try:
        yield stack
    except BaseException:
        stop_stack(stack)
        raise
    assert stop_stack(stack) == 0, stack.logs()


def stack_in_each_mode() -> Any:
    """A module-scoped `stack` fixture that runs a module's tests on the session stack of
    each mode (conftest's colocated_stack and microservices_stack): `stack = stack_in_each_mode()`
    at the top of a test module for the core subset that must hold in both modes."""

    @pytest.fixture(scope="module", params=MODES, name="stack")
    def stack(request: pytest.FixtureRequest) -> Stack:
        return cast(Stack, request.getfixturevalue(f"{request.param}_stack"))

    return stack
