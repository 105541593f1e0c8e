"""The cluster rehearsal: run an overlay's Deployments as local processes, behind Envoy.

`rehearse(work_dir, "dev")` renders k8s/overlays/dev (`components=("colocated-router",)`
adds k8s/components/colocated-router on top, as an overlay built on dev would) and starts each Interlock container's
own command (`python -m ...` with this venv's python, `envoy` with this venv's envoy) with
exactly the environment and arguments the manifests give it: ConfigMaps (envFrom and key
references) resolved, $(VAR) expanded, mounted ConfigMaps and emptyDirs as local
directories, and Secrets supplied here (a generated admin key and pepper, the datastore
URLs, a self-signed certificate for Envoy). Only what a pod's network gives differs:

- every Service port is a free loopback port, so Service names in addresses and URLs
  become 127.0.0.1:<that port>, and a 0.0.0.0 listen becomes 127.0.0.1 on the port of the
  Service that targets it (or a free one: metrics, Envoy's probe and admin ports);
- mount paths become the local directories, and Envoy's /dev/stdout access log a file;
- the data component's workloads are not started: their Services map to this machine's
  PostgreSQL (a fresh database per run, dropped afterwards) and Redis (a key prefix of its
  own, the one setting overridden, so concurrent runs never share counters).

Each process starts once the Services it is configured to reach are ready, and counts as
ready when its own readinessProbe passes: the rehearsal exercises the probes too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import psycopg
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from tests.support.fronted import FrontedStack
from tests.support.manifests import (
    Manifests,
    Obj,
    Workload,
    container_port,
    expand,
    flows,
    parse_address,
    render,
    service_name,
)
from tests.support.stack import free_port

READY_SECONDS = 90.0
STOP_SECONDS = 20.0
PG_ADMIN_URL = os.environ.get("INTERLOCK_REHEARSAL_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_ADDR = ("127.0.0.1", 6379)
# The data component's workloads, by app.kubernetes.io/name, and where this machine runs them.
LOCAL_DATASTORES = {"postgres": ("127.0.0.1", 5432), "redis": REDIS_ADDR}
REDIS_PREFIX_SETTING = "INTERLOCK_RATELIMIT_REDIS_PREFIX"
VENV_BIN = Path(sys.executable).parent
# The image's own environment (Dockerfile ENV), under the manifests' variables.
IMAGE_ENV = {
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
# Listen addresses meaning "every interface", to be made loopback.
WILDCARDS = ("0.0.0.0", "::", "[::]")


@dataclass
class Ports:
    """Where each Service port and each container port lives on this machine."""

    services: dict[tuple[str, int], int] = field(default_factory=dict)
    containers: dict[tuple[str, int], int] = field(default_factory=dict)
    # Service ports of the datastores, on their real local hosts.
    hosts: dict[tuple[str, int], str] = field(default_factory=dict)

    def service(self, name: str, port: int) -> tuple[str, int]:
        if (name, port) not in self.services:
            raise KeyError(f"no Service {name}:{port} in the rendered manifests")
        return self.hosts.get((name, port), "127.0.0.1"), self.services[(name, port)]

    def container(self, workload: str, port: int) -> int:
        key = (workload, port)
        if key not in self.containers:
            self.containers[key] = free_port()
        return self.containers[key]


def plan_ports(m: Manifests) -> Ports:
    ports = Ports()
    for svc in m.of_kind("Service"):
        name = svc["metadata"]["name"]
        selected = m.selected_workloads(svc["spec"].get("selector"))
        for entry in svc["spec"].get("ports") or []:
            datastore = next(
                (LOCAL_DATASTORES.get(w.pod_labels.get("app.kubernetes.io/name", "")) for w in selected), None
            )
            if datastore is not None:
                ports.hosts[(name, entry["port"])] = datastore[0]
                ports.services[(name, entry["port"])] = datastore[1]
                continue
            local = ports.services.setdefault((name, entry["port"]), free_port())
            for workload in selected:
                for container in workload.containers:
                    number = container_port(container, entry.get("targetPort", entry["port"]))
                    if number is not None:
                        ports.containers[(workload.name, number)] = local
    return ports


@dataclass
class Rewriter:
    """Turns a container's view (Service names, wildcard listens, mount paths) into this machine's."""

    m: Manifests
    ports: Ports
    workload: str
    # mountPath -> local path, longest first.
    mounts: list[tuple[str, Path]]

    def path(self, value: str) -> str:
        for mount, local in self.mounts:
            if value == mount:
                return str(local)
            if value.startswith(mount.rstrip("/") + "/"):
                return str(local / value[len(mount.rstrip("/")) + 1 :])
        return value

    def endpoint(self, host: str, port: int) -> tuple[str, int] | None:
        if host in WILDCARDS:
            return "127.0.0.1", self.ports.container(self.workload, port)
        name = service_name(host, self.m.namespace)
        if name is not None and (name, port) in self.ports.services:
            return self.ports.service(name, port)
        return None

    def value(self, value: str) -> str:
        if value in WILDCARDS:
            return "127.0.0.1"
        address = parse_address(value)
        if address is not None:
            local = self.endpoint(address.host, address.port)
            if local is None:
                return value
            if "://" not in value:
                return f"{local[0]}:{local[1]}"
            parts = urlsplit(value)
            auth = parts.netloc.rpartition("@")[0]
            return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}{local[0]}:{local[1]}"))
        return self.path(value)

    def environment(self, env: Mapping[str, str], container: Obj) -> dict[str, str]:
        out = {}
        declared = {int(p["containerPort"]) for p in container.get("ports") or []}
        for name, value in env.items():
            if name.endswith("_PORT") and value.isdigit() and int(value) in declared:
                out[name] = str(self.ports.container(self.workload, int(value)))
            else:
                out[name] = self.value(value)
        return out

    def envoy_config(self, config: Obj, access_log: Path) -> Obj:
        """Envoy's bootstrap with its sockets, files and stdout access log made local. The admin
        interface stays on loopback, on a free port (its pod's port would collide here)."""
        local: Obj = self._envoy_node(config, access_log)
        local["admin"]["address"]["socket_address"]["port_value"] = free_port()
        return local

    def _envoy_node(self, node: Any, access_log: Path) -> Any:
        if isinstance(node, dict):
            socket_address = node.get("socket_address")
            if isinstance(socket_address, dict) and "port_value" in socket_address:
                local = self.endpoint(socket_address["address"], int(socket_address["port_value"]))
                if local is not None:
                    node = {**node, "socket_address": {**socket_address, "address": local[0], "port_value": local[1]}}
            return {k: self._envoy_node(v, access_log) for k, v in node.items()}
        if isinstance(node, list):
            return [self._envoy_node(v, access_log) for v in node]
        if node == "/dev/stdout":
            return str(access_log)
        if isinstance(node, str):
            return self.path(node)
        return node


def _self_signed(directory: Path) -> tuple[Path, bytes, bytes]:
    """A CA and a certificate for 127.0.0.1 and localhost signed by it: (CA PEM path, cert PEM, key PEM)."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interlock rehearsal CA")])
    ca = build("interlock rehearsal CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", key, ca_name, ca_key, ca=False)
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca_path, cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class Process:
    workload: Workload
    container: Obj
    command: list[str]
    env: dict[str, str]
    rewriter: Rewriter
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.workload.name

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        """The container's readinessProbe, against its local port."""
        probe = self.container.get("readinessProbe") or {}
        if "grpc" in probe:
            port = self.rewriter.ports.container(self.name, int(probe["grpc"]["port"]))
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=1
                    )
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        if "httpGet" in probe:
            number = container_port(self.container, probe["httpGet"]["port"])
            assert number is not None
            url = f"http://127.0.0.1:{self.rewriter.ports.container(self.name, number)}{probe['httpGet']['path']}"
            try:
                return 200 <= httpx.get(url, timeout=1).status_code < 400
            except httpx.HTTPError:
                return False
        raise AssertionError(f"{self.name}: no readinessProbe the rehearsal can run")

    def wait_ready(self, logs: Any) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} while starting:\n{logs()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {READY_SECONDS:.0f}s:\n{logs()}")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _volumes(
    m: Manifests, workload: Workload, container: Obj, root: Path, files: Mapping[str, Mapping[str, str]]
) -> list[tuple[str, Path]]:
    """Materialise the container's mounts under root; mountPath -> local path, longest first."""
    volumes = {v["name"]: v for v in workload.pod_spec.get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = m.config_map(volume["configMap"]["name"]) or {}
        elif "secret" in volume:
            data = dict(files[volume["secret"]["secretName"]])
        else:  # emptyDir: an empty, writable directory
            data = {}
        for key, text in data.items():
            (local / key).write_text(text)
        target = local / mount["subPath"] if mount.get("subPath") else local
        mounts.append((mount["mountPath"], target))
    return sorted(mounts, key=lambda pair: len(pair[0]), reverse=True)


def _order(m: Manifests, workloads: list[Workload], supplied: Mapping[str, Mapping[str, str]]) -> list[Workload]:
    """Dependencies first: a workload after the workloads behind the Services it reaches.
    A cycle (router sends usage its events, usage's job service calls the router) is broken
    by starting the waiting workload with the fewest unmet needs: gRPC clients connect lazily,
    so a service starts without its peers."""
    found = flows(m, supplied)
    needs: dict[str, set[str]] = {w.name: set() for w in workloads}
    for flow in found:
        svc = m.get("Service", flow.service)
        for target in m.selected_workloads(svc["spec"].get("selector") if svc else None):
            if target.name in needs and target.name != flow.source.name:
                needs[flow.source.name].add(target.name)
    ordered: list[Workload] = []
    while len(ordered) < len(workloads):
        ready = [w for w in workloads if w not in ordered and needs[w.name] <= {o.name for o in ordered}]
        if not ready:
            started = {o.name for o in ordered}
            waiting = [w for w in workloads if w not in ordered]
            ready = [min(waiting, key=lambda w: (len(needs[w.name] - started), w.name))]
        ordered += sorted(ready, key=lambda w: w.name)
    return ordered


@contextmanager
def _database() -> Iterator[str]:
    """A fresh database on this machine's PostgreSQL, dropped afterwards."""
    name = f"rehearsal_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def _redis_prefix() -> Iterator[str]:
    prefix = f"rh{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        client = redis.Redis(host=REDIS_ADDR[0], port=REDIS_ADDR[1])
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _create_key(edge_url: str, admin_key: str) -> str:
    # Roomy limits of its own, so the tests meet Envoy's per-IP rules, not the key's plan.
    body = {"name": "rehearsal", "requests_per_minute": 100_000, "burst": 100_000, "tokens_per_minute": 1_000_000_000}
    reply = httpx.post(f"{edge_url}/v1/keys", headers={"Authorization": f"Bearer {admin_key}"}, json=body, timeout=10)
    reply.raise_for_status()
    secret = str(reply.json()["key"])
    # The edge learns new keys over catalog's watch stream: hand the key out once it works.
    deadline = time.monotonic() + READY_SECONDS
    headers = {"Authorization": f"Bearer {secret}"}
    while httpx.get(f"{edge_url}/v1/models", headers=headers, timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the edge never learned the rehearsal's key")
        time.sleep(0.05)
    return secret


@dataclass(frozen=True)
class Run:
    """What one rehearsal gives every process: its directory, Secrets and local stand-ins."""

    m: Manifests
    ports: Ports
    work_dir: Path
    # The Secrets an operator creates (README.md, "Kubernetes"), with rehearsal values.
    secrets: Mapping[str, Mapping[str, str]]
    redis_prefix: str
    access_log: Path

    def process(self, workload: Workload) -> Process:
        """The container's command and environment as the kubelet would start them, made local."""
        (container,) = workload.containers
        mounts = _volumes(self.m, workload, container, self.work_dir / workload.name, self.secrets)
        rewriter = Rewriter(self.m, self.ports, workload.name, mounts)
        env = self.m.environment(container, self.secrets)
        local_env = {**IMAGE_ENV, **rewriter.environment(env, container)}
        if "INTERLOCK_RATELIMIT_REDIS_URL" in local_env:
            local_env[REDIS_PREFIX_SETTING] = self.redis_prefix
        # The harness, not the manifests: die with this process (services/common/parent.py).
        local_env["INTERLOCK_PARENT_PID"] = str(os.getpid())
        # The kubelet expands $(VAR) in command and args from the container's environment.
        declared = [*(container.get("command") or []), *(container.get("args") or [])]
        command = [rewriter.value(expand(arg, env)) for arg in declared]
        if command[0] == "python":
            command[0] = sys.executable
        elif command[0] == "envoy":
            command[0] = str(VENV_BIN / "envoy")
            config_path = Path(command[command.index("-c") + 1])
            config = rewriter.envoy_config(yaml.safe_load(config_path.read_text()), self.access_log)
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = self.work_dir / "logs" / f"{workload.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return Process(workload, container, command, local_env, rewriter, log_path)

    def port(self, workload: str, port_name: str) -> int:
        """The local port of a workload's named container port."""
        number = next(n for c in self.m.workload(workload).containers if (n := container_port(c, port_name)))
        return self.ports.container(workload, number)


@contextmanager
def rehearse(work_dir: Path, overlay: str = "dev", components: Sequence[str] = ()) -> Iterator[FrontedStack]:
    """Run k8s/overlays/<overlay>, with each of k8s/components/<components> applied after it,
    on this machine; yield it as a FrontedStack."""
    m = Manifests(render("+".join([f"overlays/{overlay}", *(f"components/{c}" for c in components)])))
    interlock = [w for w in m.workloads() if w.is_interlock]
    others = {w.pod_labels.get("app.kubernetes.io/name") for w in m.workloads() if not w.is_interlock}
    if others - set(LOCAL_DATASTORES):
        raise RuntimeError(f"no local stand-in for {others - set(LOCAL_DATASTORES)}")
    admin_key = "il-" + secrets.token_urlsafe(32)
    processes: list[Process] = []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_path.read_text(errors='replace')}" for p in processes)

    with ExitStack() as stack:
        database = stack.enter_context(_database())
        ca_cert, cert, key = _self_signed(work_dir / "tls")
        url = f"postgresql://postgres@postgres:5432/{database}"
        run = Run(
            m,
            plan_ports(m),
            work_dir,
            secrets={
                "interlock-keys": {"admin-key": admin_key, "key-pepper": secrets.token_hex(32)},
                "interlock-datastores": {
                    "catalog-database-url": url,
                    "usage-database-url": url,
                    "redis-url": "redis://redis:6379/0",
                },
                "interlock-envoy-tls": {"tls.crt": cert.decode(), "tls.key": key.decode()},
            },
            redis_prefix=stack.enter_context(_redis_prefix()),
            access_log=work_dir / "envoy-access.log",
        )
        stack.callback(_stop, processes)
        for workload in _order(m, interlock, run.secrets):
            process = run.process(workload)
            processes.append(process)
            process.start()
            process.wait_ready(logs)
        edge_url = f"http://127.0.0.1:{run.ports.service('edge', 8080)[1]}"
        limits = m.environment(m.workload("ratelimit").containers[0], run.secrets)
        yield FrontedStack(
            url=f"https://127.0.0.1:{run.port('envoy', 'https')}",
            grpc_addr=f"127.0.0.1:{run.port('envoy', 'grpc-internal')}",
            edge_url=edge_url,
            api_key=_create_key(edge_url, admin_key),
            admin_key=admin_key,
            ca_cert=ca_cert,
            access_log=run.access_log,
            ip_rpm=int(limits.get("INTERLOCK_RATELIMIT_IP_RPM") or 0),
            anonymous_rpm=int(limits.get("INTERLOCK_RATELIMIT_ANONYMOUS_RPM") or 0),
            logs=logs,
        )


def _stop(processes: list[Process]) -> None:
    """Stop in reverse start order (Envoy first, catalog last), each with its own drain."""
    for process in reversed(processes):
        process.stop()
        process.reap(time.monotonic() + STOP_SECONDS)
    processes.clear()
