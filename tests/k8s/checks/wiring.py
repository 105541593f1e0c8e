"""Wiring: Services reach pods on real ports, probes name real ports, every configured
address is a Service port, and Envoy's config fits the pod that runs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tests.k8s.checks.common import Problems, describe
from tests.support.manifests import (
    Manifests,
    SecretValues,
    container_port,
    envoy_config,
    envoy_upstreams,
    flows,
    service_name,
)

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _probe_port(probe: Mapping[str, Any]) -> int | str | None:
    for handler in ("grpc", "httpGet", "tcpSocket"):
        if handler in probe:
            port: int | str = probe[handler]["port"]
            return port
    return None


def services_select_pods(m: Manifests) -> Problems:
    """Every Service with a selector selects the pods of some Deployment or StatefulSet."""
    return [
        f"{describe(s)} selects no pods ({s['spec']['selector']})"
        for s in m.of_kind("Service")
        if s["spec"].get("selector") and not m.selected_workloads(s["spec"]["selector"])
    ]


def service_ports_match(m: Manifests) -> Problems:
    """Every Service port's targetPort is a port of every container set it selects; a headless
    Service's port is the container port itself (clients dial the pods directly)."""
    problems = []
    for service in m.of_kind("Service"):
        headless = service["spec"].get("clusterIP") == "None"
        for workload in m.selected_workloads(service["spec"].get("selector")):
            for entry in service["spec"].get("ports") or []:
                target = entry.get("targetPort", entry["port"])
                numbers = [n for c in workload.containers if (n := container_port(c, target)) is not None]
                if not numbers:
                    problems.append(f"{describe(service)} port {entry['port']}: {workload.name} has no port {target!r}")
                elif headless and entry["port"] not in numbers:
                    where = f"{describe(service)} is headless, so port {entry['port']}"
                    problems.append(f"{where} must be the container's ({numbers[0]})")
    return problems


def probe_ports_match(m: Manifests) -> Problems:
    """Every probe's port is a port the container declares, by number or by name."""
    problems = []
    for workload in m.workloads():
        for container in workload.all_containers:
            for kind in PROBES:
                probe = container.get(kind)
                port = None if probe is None else _probe_port(probe)
                if port is not None and container_port(container, port) is None:
                    problems.append(f"{workload.name}/{container['name']} {kind} port {port!r} is not a container port")
    return problems


def addresses_resolve(m: Manifests, secrets: SecretValues | None = None) -> Problems:
    """Every address a container is given points at a Service that exists, on a port it has,
    and every Envoy upstream is a Service name."""
    problems = []
    for flow in flows(m, secrets):
        if m.get("Service", flow.service) is None:
            problems.append(f"{flow.source.name} {flow.via}: no Service {flow.service!r}")
        elif m.service_target(flow.service, flow.port) is None:
            problems.append(f"{flow.source.name} {flow.via}: Service {flow.service!r} has no port {flow.port}")
    for workload in m.workloads():
        for cluster, host, _ in envoy_upstreams(envoy_config(m, workload) or {}):
            if service_name(host, m.namespace) is None:
                problems.append(f"{workload.name}: Envoy cluster {cluster} points at {host}, not a Service name")
    return problems


def _files(node: Any) -> Iterator[str]:
    """Every file an Envoy config reads (DataSource.filename: certificates, keys)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                yield value
            else:
                yield from _files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _files(item)


def envoy_config_matches_pod(m: Manifests) -> Problems:
    """Envoy's config fits the pod it runs in: `-c` names a mounted file, every listener binds a
    port the container declares, every file it reads is under a mount, and its admin interface
    listens on loopback only."""
    problems = []
    for workload in m.workloads():
        config = envoy_config(m, workload)
        if config is None:
            continue
        for container in workload.containers:
            command = [*(container.get("command") or []), *(container.get("args") or [])]
            if not command or command[0] != "envoy":
                continue
            where = f"{workload.name}/{container['name']}"
            mounts = [v["mountPath"] for v in container.get("volumeMounts") or []]

            def mounted(path: str, mounts: list[str] = mounts) -> bool:
                return any(path == mount or path.startswith(mount.rstrip("/") + "/") for mount in mounts)

            if "-c" not in command or not mounted(command[command.index("-c") + 1]):
                problems.append(f"{where}: the config file given with -c is not mounted")
            ports = {int(p["containerPort"]) for p in container.get("ports") or []}
            for listener in config.get("static_resources", {}).get("listeners") or []:
                port = int(listener["address"]["socket_address"]["port_value"])
                if port not in ports:
                    problems.append(f"{where}: listener {listener['name']} binds {port}, not a container port")
            problems += [f"{where}: reads {path}, which is not mounted" for path in _files(config) if not mounted(path)]
            admin = config.get("admin", {}).get("address", {}).get("socket_address", {}).get("address")
            if admin not in ("127.0.0.1", "::1"):
                problems.append(f"{where}: the admin interface listens on {admin}, not loopback")
    return problems
