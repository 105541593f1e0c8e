"""NetworkPolicies: they select real pods, and let every configured connection through."""

from __future__ import annotations

from tests.k8s import netpol
from tests.k8s.checks.common import Problems, describe
from tests.support.manifests import Manifests, SecretValues, Workload, container_port, flows, selects

# Where a pod must be able to resolve names (the cluster's DNS).
DNS = netpol.Endpoint(
    labels={"k8s-app": "kube-dns"},
    namespace="kube-system",
    namespace_labels={"kubernetes.io/metadata.name": "kube-system"},
    ports={"dns": 53},
)


def network_policies_select_pods(m: Manifests) -> Problems:
    """Every NetworkPolicy, and every pod selector in its rules (peers in this namespace),
    selects the pods of some workload here."""
    problems = []
    labels = [w.pod_labels for w in m.workloads()]
    for policy in m.of_kind("NetworkPolicy"):
        if not any(selects(policy["spec"].get("podSelector"), x) for x in labels):
            problems.append(f"{describe(policy)} selects no pods")
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(direction) or []:
                for peer in rule.get(key) or []:
                    local = "podSelector" in peer and "namespaceSelector" not in peer
                    if local and not any(selects(peer["podSelector"], x) for x in labels):
                        problems.append(f"{describe(policy)} {direction} peer {peer['podSelector']} selects no pods")
    return problems


def _endpoint(m: Manifests, workload: Workload) -> netpol.Endpoint:
    return netpol.pod_endpoint(m, workload.pod_labels, workload.containers)


def network_allows_flows(m: Manifests, secrets: SecretValues | None = None) -> Problems:
    """The NetworkPolicies let every configured connection through (source egress and
    destination ingress), and every pod that connects by name reach DNS."""
    policies = m.of_kind("NetworkPolicy")
    found = flows(m, secrets)
    problems = []
    for flow in found:
        target = m.service_target(flow.service, flow.port)
        if target is None:
            continue
        service, entry = target
        for destination in m.selected_workloads(service["spec"].get("selector")):
            port_ref = entry.get("targetPort", entry["port"])
            number = next((n for c in destination.containers if (n := container_port(c, port_ref)) is not None), None)
            if number is None:
                continue
            if not netpol.allowed(policies, _endpoint(m, flow.source), _endpoint(m, destination), number):
                problems.append(f"{flow.source.name} → {destination.name}:{number} ({flow.via}) is blocked")
        if not netpol.allowed(policies, _endpoint(m, flow.source), DNS, 53, "UDP"):
            problems.append(f"{flow.source.name} cannot reach DNS (UDP 53) to resolve {flow.service}")
    return sorted(set(problems))
