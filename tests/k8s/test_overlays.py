"""What each overlay promises: dev is small and self-contained; production is autoscaled,
disruption-budgeted, and its NetworkPolicies allow exactly the configured traffic."""

from __future__ import annotations

import pytest

from tests.k8s import netpol
from tests.support import manifests
from tests.support.manifests import Manifests

PROCESSES = {"catalog", "router", "ratelimit", "usage", "edge", "envoy"}
DATASTORES = {"postgres", "redis"}


@pytest.fixture(scope="module")
def dev() -> Manifests:
    return Manifests(manifests.render("overlays/dev"))


@pytest.fixture(scope="module")
def production() -> Manifests:
    return Manifests(manifests.render("overlays/production"))


def test_base_has_one_deployment_service_and_account_per_process() -> None:
    base = Manifests(manifests.render("base"))
    assert {d["metadata"]["name"] for d in base.of_kind("Deployment")} == PROCESSES
    assert {s["metadata"]["name"] for s in base.of_kind("ServiceAccount")} == PROCESSES
    assert {s["metadata"]["name"] for s in base.of_kind("Service")} == PROCESSES | {"envoy-internal"}
    for workload in base.workloads():
        assert workload.pod_spec["serviceAccountName"] == workload.name
        assert workload.pod_spec["automountServiceAccountToken"] is False


def test_dev_runs_one_of_each_with_the_datastores(dev: Manifests) -> None:
    assert {w.name: w.replicas for w in dev.workloads()} == dict.fromkeys(PROCESSES | DATASTORES, 1)
    assert dev.get("PersistentVolumeClaim", "data") is None  # the StatefulSet claims its own
    postgres = dev.workload("postgres")
    assert postgres.kind == "StatefulSet"
    assert postgres.obj["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_production_keeps_datastores_outside(production: Manifests) -> None:
    assert {w.name for w in production.workloads()} == PROCESSES


def test_production_autoscales_every_process_from_two(production: Manifests) -> None:
    scaled = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in production.of_kind("HorizontalPodAutoscaler")}
    assert set(scaled) == PROCESSES
    for workload in production.workloads():
        spec = scaled[workload.name]
        assert spec["minReplicas"] >= 2
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        # Left to the autoscaler: applying the manifests must not reset its count.
        assert workload.replicas is None


def test_production_budgets_every_process(production: Manifests) -> None:
    budgeted = {
        w.name
        for p in production.of_kind("PodDisruptionBudget")
        for w in production.selected_workloads(p["spec"]["selector"])
    }
    assert budgeted == PROCESSES


def test_production_exposes_only_envoy_https(production: Manifests) -> None:
    public = [s for s in production.of_kind("Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert [(s["metadata"]["name"], [p["port"] for p in s["spec"]["ports"]]) for s in public] == [("envoy", [443])]


def test_production_policies_allow_exactly_the_configured_traffic(production: Manifests) -> None:
    """Pod to pod, the only connections allowed are the ones a process is configured to make
    (its INTERLOCK_*_ADDR settings and Envoy's upstreams): no lateral path beyond them."""
    assert netpol.allowed_connections(production) == netpol.configured_connections(production)


def test_production_policies_from_outside(production: Manifests) -> None:
    """From the internet only Envoy's HTTPS port; from another namespace also Envoy's internal
    gRPC listener; from the monitoring namespace the metrics ports."""
    policies = production.of_kind("NetworkPolicy")
    pods = netpol.pods(production)
    internet = netpol.Endpoint(ip="203.0.113.9")
    elsewhere = netpol.Endpoint(
        labels={"app": "client"}, namespace="team-a", namespace_labels={"kubernetes.io/metadata.name": "team-a"}
    )
    monitoring = netpol.Endpoint(namespace="monitoring", namespace_labels={"kubernetes.io/metadata.name": "monitoring"})

    def reachable(source: netpol.Endpoint) -> set[tuple[str, str]]:
        return {
            (name, port_name)
            for name, pod in pods.items()
            for port_name, port in pod.ports.items()
            if netpol.allowed(policies, source, pod, port)
        }

    assert reachable(internet) == {("envoy", "https")}
    assert reachable(elsewhere) == {("envoy", "https"), ("envoy", "grpc-internal")}
    scraped = {(name, "metrics") for name in PROCESSES - {"edge", "envoy"}} | {("edge", "http")}
    assert reachable(monitoring) == {("envoy", "https"), ("envoy", "grpc-internal"), *scraped}


def test_production_router_reaches_providers_only_on_https(production: Manifests) -> None:
    policies = production.of_kind("NetworkPolicy")
    pods = netpol.pods(production)
    provider = netpol.Endpoint(ip="162.159.140.245")
    assert netpol.allowed(policies, pods["router"], provider, 443)
    assert not netpol.allowed(policies, pods["router"], provider, 80)
    # Not inside private networks (another cluster service, a cloud metadata endpoint).
    assert not netpol.allowed(policies, pods["router"], netpol.Endpoint(ip="10.0.0.7"), 443)
    assert not netpol.allowed(policies, pods["edge"], provider, 443)


def test_dev_datastores_admit_only_their_services(dev: Manifests) -> None:
    policies = dev.of_kind("NetworkPolicy")
    pods = netpol.pods(dev)
    for store, port, clients in (("postgres", 5432, {"catalog", "usage"}), ("redis", 6379, {"ratelimit"})):
        admitted = {
            name for name, pod in pods.items() if name != store and netpol.allowed(policies, pod, pods[store], port)
        }
        assert admitted == clients
