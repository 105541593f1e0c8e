"""The co-located component (k8s/components/colocated-router) on dev and on production: the
router runs inside the edge pods, which take over everything the router Deployment had (its
settings, provider keys, spool room, resources, gRPC port, Service and network rules), and
nothing else changes. The generic checks (test_consistency, test_schemas) run on both too."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.k8s import netpol
from tests.support import manifests
from tests.support.manifests import Manifests, Obj, Workload, container_port, parse_address

COMPONENT = "components/colocated-router"
# (plain overlay, the same with the component), the two ways the repository combines them.
PAIRS = {
    "dev": ("overlays/dev", "overlays/colocated"),
    "production": ("overlays/production", f"overlays/production+{COMPONENT}"),
}
# What goes with the router Deployment; its Service and ConfigMap stay (the edge uses them).
ROUTER_OBJECTS = {"Deployment", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# Values for every key of the provider Secret, so the environment shows where each one lands.
PROVIDER_KEYS = {
    "interlock-providers": {k: f"{k}-value" for k in ("openai-api-key", "anthropic-api-key", "gemini-api-key")}
}
# Deliberately not the router's: the in-process router's metrics are on the edge's /metrics.
NOT_CARRIED = {"INTERLOCK_ROUTER_METRICS_LISTEN"}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request: pytest.FixtureRequest) -> tuple[Manifests, Manifests]:
    plain, colocated = PAIRS[request.param]
    return Manifests(manifests.render(plain)), Manifests(manifests.render(colocated))


def _edge(m: Manifests) -> Obj:
    (container,) = m.workload("edge").containers
    return container


def _identity(obj: Obj) -> tuple[str, str]:
    name = obj["metadata"]["name"]
    # Generated ConfigMaps carry a content hash, which the component's merge changes.
    if obj["kind"] == "ConfigMap":
        name = name.rsplit("-", 1)[0]
    return obj["kind"], name


def test_router_objects_go_and_nothing_else_does(pair: tuple[Manifests, Manifests]) -> None:
    plain, colocated = pair
    before = {_identity(o) for o in plain}
    removed = {(kind, name) for kind, name in before if name == "router" and kind in ROUTER_OBJECTS}
    assert ("Deployment", "router") in removed
    assert {_identity(o) for o in colocated} == before - removed
    assert {w.name for w in colocated.workloads()} == {w.name for w in plain.workloads()} - {"router"}


def test_router_service_reaches_the_edge_router_listener(pair: tuple[Manifests, Manifests]) -> None:
    """router:50052 (usage's jobs, Envoy's internal gRPC cluster) lands on the edge pods, on the
    named port where the edge's co-located router listens."""
    _, colocated = pair
    service = colocated.get("Service", "router")
    assert service is not None
    assert [w.name for w in colocated.selected_workloads(service["spec"]["selector"])] == ["edge"]
    (entry,) = service["spec"]["ports"]
    edge = _edge(colocated)
    env = colocated.environment(edge)
    listen = parse_address(env["INTERLOCK_ROUTER_LISTEN"])
    assert listen is not None
    assert container_port(edge, entry["targetPort"]) == listen.port == entry["port"] == 50052
    assert env["INTERLOCK_EDGE_MODE"] == "colocated"
    # Readiness stays the edge's own HTTP check.
    assert edge["readinessProbe"]["httpGet"]["port"] == "http"


def test_edge_reads_every_router_setting(pair: tuple[Manifests, Manifests]) -> None:
    """The edge container sees what the router container saw (ConfigMaps, provider keys), keeps
    its own settings, and is switched to co-located mode."""
    plain, colocated = pair
    (router,) = plain.workload("router").containers
    router_env = plain.environment(router, PROVIDER_KEYS)
    edge_env = plain.environment(_edge(plain), PROVIDER_KEYS)
    colocated_env = colocated.environment(_edge(colocated), PROVIDER_KEYS)
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"} <= set(router_env)
    carried = {k: v for k, v in router_env.items() if k not in NOT_CARRIED}
    assert {k: colocated_env.get(k) for k in carried} == carried
    assert {k: colocated_env.get(k) for k in edge_env} == edge_env
    assert set(colocated_env) - set(router_env) - set(edge_env) == {"INTERLOCK_EDGE_MODE"}
    assert colocated_env.get("INTERLOCK_ROUTER_METRICS_LISTEN", "") == ""


_UNITS = {"": 1, "m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi)?", str(value))
    assert match is not None, value
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def _resources(workload: Workload) -> dict[tuple[str, str], float]:
    (container,) = workload.containers
    return {
        (bound, resource): _quantity(amount)
        for bound, amounts in container["resources"].items()
        for resource, amount in amounts.items()
    }


def _size_limit(workload: Workload, volume: str) -> float:
    (found,) = [v for v in workload.pod_spec["volumes"] if v["name"] == volume]
    return _quantity(found["emptyDir"]["sizeLimit"])


def test_edge_has_room_for_both(pair: tuple[Manifests, Manifests]) -> None:
    """Requests, limits and the data directory (the usage spool) are the overlay's edge plus its
    router, so the autoscaler's CPU target and the scheduler see one pod doing both jobs."""
    plain, colocated = pair
    edge, router = _resources(plain.workload("edge")), _resources(plain.workload("router"))
    assert _resources(colocated.workload("edge")) == {key: edge[key] + router[key] for key in edge}
    expected = _size_limit(plain.workload("edge"), "data") + _size_limit(plain.workload("router"), "data")
    assert _size_limit(colocated.workload("edge"), "data") == expected
    assert colocated.workload("edge").pod_spec["securityContext"] == plain.workload("edge").pod_spec["securityContext"]


@pytest.fixture(scope="module")
def production() -> Manifests:
    return Manifests(manifests.render(PAIRS["production"][1]))


def test_production_policies_allow_exactly_the_configured_traffic(production: Manifests) -> None:
    connections = netpol.configured_connections(production)
    # The router's callers now reach the edge's router port; its calls now leave the edge.
    assert {("usage", "edge", 50052), ("envoy", "edge", 50052), ("edge", "catalog", 50051)} <= connections
    assert not {c for c in connections if "router" in c}
    assert netpol.allowed_connections(production) == connections


def test_production_edge_reaches_providers_only_on_https(production: Manifests) -> None:
    policies = production.of_kind("NetworkPolicy")
    edge = netpol.pods(production)["edge"]
    provider = netpol.Endpoint(ip="162.159.140.245")
    assert netpol.allowed(policies, edge, provider, 443)
    assert not netpol.allowed(policies, edge, provider, 80)
    assert not netpol.allowed(policies, edge, netpol.Endpoint(ip="10.0.0.7"), 443)


def test_production_router_port_closed_from_outside(production: Manifests) -> None:
    """The router's port on the edge pods takes the router's callers only: not the internet,
    not another namespace (they use Envoy's internal listener), not monitoring."""
    policies = production.of_kind("NetworkPolicy")
    edge = netpol.pods(production)["edge"]
    outsiders = (
        netpol.Endpoint(ip="203.0.113.9"),
        netpol.Endpoint(namespace="team-a", namespace_labels={"kubernetes.io/metadata.name": "team-a"}),
        netpol.Endpoint(namespace="monitoring", namespace_labels={"kubernetes.io/metadata.name": "monitoring"}),
    )
    assert not [o for o in outsiders if netpol.allowed(policies, o, edge, 50052)]
    callers = {name for name, pod in netpol.pods(production).items() if netpol.allowed(policies, pod, edge, 50052)}
    assert callers == {"envoy", "usage", "edge"}


def test_reordered_policy_fails_the_build(tmp_path: Path) -> None:
    """The component's NetworkPolicy edits check the rule they change still names the router: a
    policy whose peers moved fails to render rather than losing some other peer."""
    root = tmp_path / "k8s"
    shutil.copytree(manifests.K8S, root)
    policies = root / "components" / "network-policies" / "networkpolicies.yaml"
    text = policies.read_text()
    router_peer = (
        "        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: router\n              app.kubernetes.io/part-of: interlock\n"
    )
    catalog_ingress = text.index("name: catalog-ingress")
    at = text.index(router_peer, catalog_ingress)
    first = text.index("        - podSelector:", catalog_ingress)
    moved = text[:first] + router_peer + text[first:at] + text[at + len(router_peer) :]
    assert moved != text
    policies.write_text(moved)
    manifests.render(manifests.compose("overlays/production", root))  # the overlay alone still builds
    with pytest.raises(manifests.RenderError, match="test"):
        manifests.render(manifests.compose(f"overlays/production+{COMPONENT}", root))
