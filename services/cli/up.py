"""`interlock up`: run the whole stack on one machine with embedded defaults.

Starts catalog, usage, ratelimit, router and the edge as separate processes
wired over loopback, waits until each is healthy, and supervises them: a
process that dies is restarted a few times, and if it keeps dying the whole
stack stops with a clear message. Never a half-alive stack.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import keys
from services.common.parent import PARENT_PID_ENV

START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    data_dir: Path
    config: Path | None


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    # gRPC address to health-check, or None for the HTTP edge.
    grpc_addr: str | None
    # Where its Prometheus /metrics listens (host:port), or None (the edge serves its own at /metrics).
    metrics_addr: str | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secret_file(path: Path) -> str:
    """A server-side secret kept in the data directory, created on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def plan_children(options: UpOptions, environ: Mapping[str, str]) -> tuple[list[Child], str, str]:
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pepper = environ.get("INTERLOCK_KEY_PEPPER") or _secret_file(data_dir / "secrets" / "key_pepper")
    api_key = environ.get("INTERLOCK_API_KEY") or keys.new_secret()
    admin_key = environ.get("INTERLOCK_ADMIN_KEY") or keys.new_secret()
    ports = {name: _free_port() for name in ("catalog", "router", "ratelimit", "usage")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    metrics = {name: f"127.0.0.1:{_free_port()}" for name in ports}
    base = {
        **environ,
        "INTERLOCK_DATA_DIR": str(data_dir),
        "INTERLOCK_KEY_PEPPER": pepper,
        "INTERLOCK_CATALOG_ADDR": addr["catalog"],
        "INTERLOCK_ROUTER_ADDR": addr["router"],
        "INTERLOCK_RATELIMIT_ADDR": addr["ratelimit"],
        "INTERLOCK_USAGE_ADDR": addr["usage"],
        "PYTHONUNBUFFERED": "1",
        # Each child asks Linux to SIGTERM it when this supervisor dies (services/common/parent.py).
        PARENT_PID_ENV: str(os.getpid()),
    }
    # Secrets go only to the process that needs them.
    base.pop("INTERLOCK_API_KEY", None)
    base.pop("INTERLOCK_ADMIN_KEY", None)
    catalog_env = {
        **base,
        "INTERLOCK_CATALOG_LISTEN": addr["catalog"],
        "INTERLOCK_BOOTSTRAP_KEY": api_key,
        "INTERLOCK_ADMIN_KEY": admin_key,
    }
    if options.config is not None:
        catalog_env["INTERLOCK_CATALOG_CONFIG"] = str(options.config.resolve())
    children = [
        Child("catalog", "services.catalog", catalog_env, addr["catalog"]),
        # Usage serves the stats and usage APIs and tells the admin key from ordinary keys itself.
        Child(
            "usage",
            "services.usage",
            {**base, "INTERLOCK_USAGE_LISTEN": addr["usage"], "INTERLOCK_ADMIN_KEY": admin_key},
            addr["usage"],
        ),
        Child(
            "ratelimit",
            "services.ratelimit",
            {**base, "INTERLOCK_RATELIMIT_LISTEN": addr["ratelimit"]},
            addr["ratelimit"],
        ),
        Child("router", "services.router", {**base, "INTERLOCK_ROUTER_LISTEN": addr["router"]}, addr["router"]),
        Child(
            "edge",
            "gateway",
            {**base, "INTERLOCK_EDGE_HOST": options.host, "INTERLOCK_EDGE_PORT": str(options.port)},
            None,
        ),
    ]
    for child in children:
        if child.name in metrics:
            child.metrics_addr = metrics[child.name]
            child.env[f"INTERLOCK_{child.name.upper()}_METRICS_LISTEN"] = metrics[child.name]
    return children, api_key, admin_key


def _spawn(child: Child) -> None:
    child.process = subprocess.Popen(
        [sys.executable, "-m", child.module],
        env=child.env,
        start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
    )


def _healthy(child: Child, options: UpOptions) -> bool:
    if child.grpc_addr is not None:
        with grpc.insecure_channel(child.grpc_addr) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    wildcard = options.host in ("0.0.0.0", "::")  # noqa: S104 - a comparison, not a bind
    host = "127.0.0.1" if wildcard else options.host
    try:
        with urllib.request.urlopen(f"http://{host}:{options.port}/healthz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _wait_healthy(child: Child, options: UpOptions) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert child.process is not None
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.process.returncode} while starting")
        if _healthy(child, options):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not become healthy within {START_TIMEOUT_SECONDS:.0f}s")


def _stop_all(children: list[Child]) -> None:
    # Edge first so no new work arrives, catalog last since others watch it.
    for child in reversed(children):
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in reversed(children):
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _write_stack_file(options: UpOptions, children: list[Child]) -> None:
    """Where everything listens, for operators and scripts (no secrets in it)."""
    stack = {
        "edge": f"http://{options.host}:{options.port}",
        "services": {c.name: c.grpc_addr for c in children if c.grpc_addr},
        # Prometheus scrape URLs of the services; the edge serves its own at <edge>/metrics.
        "metrics": {c.name: f"http://{c.metrics_addr}/metrics" for c in children if c.metrics_addr},
        "pids": {c.name: c.process.pid for c in children if c.process is not None},
    }
    path = options.data_dir.resolve() / "stack.json"
    # Replace, never rewrite in place: a reader must not catch a half-written file.
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(stack, indent=2) + "\n")
    os.replace(scratch, path)


def _say(text: str) -> None:
    print(f"interlock: {text}", flush=True)


def run_up(options: UpOptions, environ: Mapping[str, str] | None = None) -> int:
    children, api_key, admin_key = plan_children(options, os.environ if environ is None else environ)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for child in children:
            _spawn(child)
            _wait_healthy(child, options)
            if stopping:
                return 0
    except RuntimeError as exc:
        _say(f"failed to start: {exc}; stopping everything")
        _stop_all(children)
        return 1

    url = f"http://{options.host}:{options.port}/v1"
    _write_stack_file(options, children)
    _say(f"ready at {url}")
    _say(f"API key: {api_key}")
    _say(f"admin key (for /v1/keys, /v1/projects and `interlock keys`): {admin_key}")
    # The key rides in the URL fragment, which browsers never send to a server.
    _say(f"usage dashboard: http://{options.host}:{options.port}/dashboard#key={admin_key}")
    _say(
        f"try: curl -s {url}/chat/completions -H 'Authorization: Bearer {api_key}' "
        """-H 'Content-Type: application/json' -d '{"model":"demo-chat","messages":[{"role":"user","content":"hi"}]}'"""
    )
    _say("press Ctrl-C to stop")
    try:
        while not stopping:
            time.sleep(0.2)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_SECONDS]
                if len(child.restarts) >= MAX_RESTARTS:
                    _say(
                        f"{child.name} died (exit code {code}) {MAX_RESTARTS} times within "
                        f"{RESTART_WINDOW_SECONDS:.0f}s; stopping the whole stack"
                    )
                    _stop_all(children)
                    return 1
                child.restarts.append(now)
                _say(f"{child.name} died (exit code {code}); restarting it")
                _spawn(child)
                try:
                    _wait_healthy(child, options)
                    _write_stack_file(options, children)
                except RuntimeError as exc:
                    _say(f"{exc}; stopping the whole stack")
                    _stop_all(children)
                    return 1
    finally:
        if stopping:
            _say("stopping")
            _stop_all(children)
            _say("stopped")
    return 0
