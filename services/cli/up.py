"""`interlock up`: run the whole stack on one machine with embedded defaults.

Starts catalog, usage and ratelimit, then the edge, as separate processes wired
over loopback, waits until each is healthy, and supervises them: a process that
dies is restarted a few times, and if it keeps dying the whole stack stops with a
clear message. Never a half-alive stack. With --envoy, Envoy fronts the edge as
one more child (services/cli/up_envoy.py).

Two modes (one codebase, as Grafana Loki and Mimir run): co-located (the default),
where the router runs inside each of --workers edge processes sharing the HTTP port
(and the router's gRPC port, for internal callers), and microservices, where the
router is its own process and the one edge calls it over gRPC.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import keys
from services.common.errors import ConfigError
from services.common.parent import PARENT_PID_ENV
from services.common.ports import free_port

if TYPE_CHECKING:
    from services.cli.up_envoy import EnvoyLayout

START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 60.0
COLOCATED = "colocated"
MICROSERVICES = "microservices"
MODES = (COLOCATED, MICROSERVICES)


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    data_dir: Path
    config: Path | None
    # Front the edge with Envoy (on --host/--port; TLS when a certificate is given).
    envoy: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    mode: str = COLOCATED
    # Co-located edge workers; None: one per core.
    workers: int | None = None


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    # gRPC address to health-check, or None for an HTTP child (see health_url).
    grpc_addr: str | None
    # Where its Prometheus /metrics listens (host:port), or None (the edge serves its own at /metrics).
    metrics_addr: str | None = None
    # What an HTTP child answers 200 on once it is ready.
    health_url: str | None = None
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


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


@dataclass
class Plan:
    children: list[Child]
    api_key: str
    admin_key: str
    # Where clients go: Envoy's listener with --envoy, else the edge's.
    public_url: str
    edge_url: str
    # The router's gRPC address: its own process, or shared by the co-located edge workers.
    router_addr: str
    mode: str = COLOCATED
    # Co-located mode: each edge worker's private URL (its own /healthz and /metrics).
    workers: dict[str, str] = field(default_factory=dict)
    envoy: EnvoyLayout | None = None


def _loopback(host: str) -> str:
    wildcard = host in ("0.0.0.0", "::")  # noqa: S104 - a comparison, not a bind
    return "127.0.0.1" if wildcard else host


def plan_children(options: UpOptions, environ: Mapping[str, str]) -> Plan:
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pepper = environ.get("INTERLOCK_KEY_PEPPER") or _secret_file(data_dir / "secrets" / "key_pepper")
    api_key = environ.get("INTERLOCK_API_KEY") or keys.new_secret()
    admin_key = environ.get("INTERLOCK_ADMIN_KEY") or keys.new_secret()
    ports = {name: free_port() for name in ("catalog", "router", "ratelimit", "usage")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    metrics = {name: f"127.0.0.1:{free_port()}" for name in ports}
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
    edge_host, edge_port = options.host, options.port
    edge_env = {**base}
    envoy: EnvoyLayout | None = None
    if options.envoy:
        # Only here: the renderer pulls in the edge's modules, which other commands do not need.
        from services.cli.up_envoy import edge_env_behind_envoy, plan_envoy  # noqa: PLC0415

        # Envoy takes the public address; the edge listens behind it on loopback only.
        edge_host, edge_port = "127.0.0.1", free_port()
        edge_env |= edge_env_behind_envoy()
        envoy = plan_envoy(
            host=options.host,
            port=options.port,
            tls_cert=options.tls_cert,
            tls_key=options.tls_key,
            data_dir=data_dir,
            upstreams={**addr, "edge": f"{edge_host}:{edge_port}"},
            free_ports={name: free_port() for name in ("grpc", "probe", "admin")},
            environ=environ,
        )
    edge_url = f"http://{_loopback(edge_host)}:{edge_port}"
    edge_env |= {"INTERLOCK_EDGE_HOST": edge_host, "INTERLOCK_EDGE_PORT": str(edge_port)}
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
    ]
    worker_urls: dict[str, str] = {}
    if options.mode == MICROSERVICES:
        children += [
            Child("router", "services.router", {**base, "INTERLOCK_ROUTER_LISTEN": addr["router"]}, addr["router"]),
            Child(
                "edge",
                "gateway",
                {**edge_env, "INTERLOCK_EDGE_MODE": MICROSERVICES},
                None,
                health_url=f"{edge_url}/healthz",
            ),
        ]
    else:
        # The router's metrics are on each worker's own /metrics (one process, one registry).
        del metrics["router"]
        workers = _edge_workers(edge_env, addr["router"], data_dir, options.workers or os.cpu_count() or 1)
        children += [child for child, _ in workers]
        worker_urls = {child.name: url for child, url in workers}
    for child in children:
        if child.name in metrics:
            child.metrics_addr = metrics[child.name]
            child.env[f"INTERLOCK_{child.name.upper()}_METRICS_LISTEN"] = metrics[child.name]
    public_url = edge_url
    if envoy is not None:
        level = "info" if base.get("INTERLOCK_LOG_LEVEL", "").lower() == "debug" else "warning"
        children.append(
            Child(
                "envoy",
                "gateway.envoy",
                {k: v for k, v in base.items() if k != "INTERLOCK_KEY_PEPPER"},
                None,
                health_url=envoy.probe_url,
                args=("run", "--config", str(envoy.config), "--log-level", level),
            )
        )
        public_url = envoy.url.replace(f"://{options.host}:", f"://{_loopback(options.host)}:")
    return Plan(children, api_key, admin_key, public_url, edge_url, addr["router"], options.mode, worker_urls, envoy)


def _edge_workers(edge_env: Mapping[str, str], router_addr: str, data_dir: Path, count: int) -> list[tuple[Child, str]]:
    """Co-located edge workers `edge`, `edge-1`, ...: each runs a router and shares the HTTP
    port and the router's gRPC port with the others, and has a private HTTP port of its own
    (health checks, its own /metrics) and its own spool, which it replays when it restarts."""
    workers = []
    for index in range(count):
        name = "edge" if index == 0 else f"edge-{index}"
        private = f"127.0.0.1:{free_port()}"
        env = {
            **edge_env,
            "INTERLOCK_EDGE_MODE": COLOCATED,
            "INTERLOCK_EDGE_REUSE_PORT": "true" if count > 1 else "false",
            "INTERLOCK_EDGE_WORKER_LISTEN": private,
            "INTERLOCK_ROUTER_LISTEN": router_addr,
            "INTERLOCK_ROUTER_SPOOL_PATH": str(data_dir / "spool" / f"edge-{index}.db"),
        }
        env.pop("INTERLOCK_ROUTER_METRICS_LISTEN", None)  # workers would fight over one port
        workers.append((Child(name, "gateway", env, None, health_url=f"http://{private}/healthz"), f"http://{private}"))
    return workers


def _spawn(child: Child) -> None:
    child.process = subprocess.Popen(
        [sys.executable, "-m", child.module, *child.args],
        env=child.env,
        start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
    )


def _healthy(child: Child) -> bool:
    if child.grpc_addr is not None:
        with grpc.insecure_channel(child.grpc_addr) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    assert child.health_url is not None
    try:
        with urllib.request.urlopen(child.health_url, timeout=1) as reply:  # noqa: S310 - our own http URL
            return bool(reply.status == 200)
    except OSError:
        return False


def _wait_healthy(child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert child.process is not None
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.process.returncode} while starting")
        if _healthy(child):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not become healthy within {START_TIMEOUT_SECONDS:.0f}s")


def _stop_all(children: list[Child]) -> None:
    # The front (Envoy, then the edge) first so no new work arrives, catalog last since others watch it.
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


def _write_stack_file(options: UpOptions, plan: Plan) -> None:
    """Where everything listens, for operators and scripts (no secrets in it)."""
    children = plan.children
    stack: dict[str, object] = {
        "public": plan.public_url,
        "edge": plan.edge_url,
        "mode": plan.mode,
        # The router's address is the shared one of the edge workers in co-located mode.
        "services": {**{c.name: c.grpc_addr for c in children if c.grpc_addr}, "router": plan.router_addr},
        # Prometheus scrape URLs of the services; the edge serves its own at <edge>/metrics.
        "metrics": {c.name: f"http://{c.metrics_addr}/metrics" for c in children if c.metrics_addr},
        "pids": {c.name: c.process.pid for c in children if c.process is not None},
    }
    if plan.workers:
        # Each co-located edge worker's own URL: its /healthz and its /metrics (the router's included).
        stack["workers"] = plan.workers
    if plan.envoy is not None:
        stack["envoy"] = plan.envoy.stack_entry()
    path = options.data_dir.resolve() / "stack.json"
    # Replace, never rewrite in place: a reader must not catch a half-written file.
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(stack, indent=2) + "\n")
    os.replace(scratch, path)


def _say(text: str) -> None:
    print(f"interlock: {text}", flush=True)


def run_up(options: UpOptions, environ: Mapping[str, str] | None = None) -> int:
    try:
        plan = plan_children(options, os.environ if environ is None else environ)
    except ConfigError as exc:
        _say(f"cannot start: {exc}")
        return 2
    children, api_key, admin_key = plan.children, plan.api_key, plan.admin_key
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for child in children:
            _spawn(child)
            _wait_healthy(child)
            if stopping:
                return 0
    except RuntimeError as exc:
        _say(f"failed to start: {exc}; stopping everything")
        _stop_all(children)
        return 1

    url = f"{plan.public_url}/v1"
    _write_stack_file(options, plan)
    _say(f"ready at {url}")
    if plan.envoy is not None:
        _say(
            f"behind Envoy: the edge at {plan.edge_url}, internal gRPC at {plan.envoy.options.grpc_listen}, "
            f"readiness at {plan.envoy.probe_url}, access log {plan.envoy.options.access_log}"
        )
    _say(f"API key: {api_key}")
    _say(f"admin key (for /v1/keys, /v1/projects and `interlock keys`): {admin_key}")
    # The key rides in the URL fragment, which browsers never send to a server.
    _say(f"usage dashboard: {plan.public_url}/dashboard#key={admin_key}")
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
                    _wait_healthy(child)
                    _write_stack_file(options, plan)
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
