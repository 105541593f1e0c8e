"""Just enough of NetworkPolicy semantics to ask "may A open a connection to B on port P?"
of a rendered set of policies, offline.

Rules modelled (networking.k8s.io/v1): a pod is isolated for a direction when some policy
selecting it lists that direction in policyTypes (Ingress by default; Egress when the policy
has egress rules); traffic is allowed when both the source's egress and the destination's
ingress allow it. Peers: podSelector (this namespace), namespaceSelector (with or without a
podSelector), ipBlock. Ports: number or the destination container's port name, protocol,
endPort. A pod's IP is treated as matching no ipBlock: in-cluster traffic must be allowed by
selector, which is what the policies here do (their ipBlocks are for the internet).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.manifests import Manifests, Obj, container_port, flows, selects


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (labels, namespace labels, named ports) or an outside IP."""

    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    # Container port name -> number, for named ports in rules.
    ports: Mapping[str, int] = field(default_factory=dict)
    # Set for a peer outside the cluster.
    ip: str = ""

    @property
    def is_pod(self) -> bool:
        return not self.ip


def pod_endpoint(m: Manifests, labels: Mapping[str, str], containers: Sequence[Obj]) -> Endpoint:
    ports = {p["name"]: int(p["containerPort"]) for c in containers for p in c.get("ports") or [] if p.get("name")}
    return Endpoint(labels=dict(labels), namespace=m.namespace, namespace_labels=namespace_labels(m), ports=ports)


def namespace_labels(m: Manifests) -> dict[str, str]:
    namespace = m.get("Namespace", m.namespace)
    labels = dict((namespace or {}).get("metadata", {}).get("labels") or {})
    # The API server adds this one to every namespace.
    labels["kubernetes.io/metadata.name"] = m.namespace
    return labels


def _peer_matches(peer: Mapping[str, Any], other: Endpoint, own_namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.is_pod:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(ex)
            for ex in block.get("except") or []
            if ipaddress.ip_network(ex).version == address.version
        )
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != own_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(rule_port: Mapping[str, Any], destination: Endpoint, port: int, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return destination.ports.get(wanted) == port
    return int(wanted) <= port <= int(rule_port.get("endPort", wanted))


def _policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def _applies(policy: Obj, pod: Endpoint) -> bool:
    return (
        pod.is_pod
        and pod.namespace == policy["metadata"].get("namespace", pod.namespace)
        and selects(policy["spec"].get("podSelector"), pod.labels)
    )


def _direction_allows(
    policies: Sequence[Obj],
    *,
    direction: str,
    subject: Endpoint,
    peer: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    """Whether the policies isolating subject in this direction let the connection through."""
    isolating = [p for p in policies if _applies(p, subject) and direction in _policy_types(p)]
    if not isolating:
        return True
    peers_key = "from" if direction == "Ingress" else "to"
    for policy in isolating:
        for rule in policy["spec"].get(direction.lower()) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(p, peer, subject.namespace) for p in peers):
                continue
            ports = rule.get("ports")
            if ports and not any(_port_matches(p, destination, port, protocol) for p in ports):
                continue
            return True
    return False


def allowed(policies: Sequence[Obj], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """May source open a connection to destination's port?"""
    return all(
        _direction_allows(
            policies,
            direction=direction,
            subject=subject,
            peer=peer,
            destination=destination,
            port=port,
            protocol=protocol,
        )
        for direction, subject, peer in (("Egress", source, destination), ("Ingress", destination, source))
    )


def pods(m: Manifests) -> dict[str, Endpoint]:
    """Every workload's pods as an endpoint, by workload name."""
    return {w.name: pod_endpoint(m, w.pod_labels, w.containers) for w in m.workloads()}


def configured_connections(m: Manifests) -> set[tuple[str, str, int]]:
    """(source, destination workload, container port) of every connection a process is
    configured to open (its INTERLOCK_*_ADDR settings, Envoy's upstreams), through the Service
    it names to the pods that Service selects; a pod's connections to its own kind left out."""
    found = set()
    for flow in flows(m):
        target = m.service_target(flow.service, flow.port)
        assert target is not None, f"{flow.via}: no Service port {flow.service}:{flow.port}"
        service, entry = target
        for workload in m.selected_workloads(service["spec"]["selector"]):
            port = next(p for c in workload.containers if (p := container_port(c, entry["targetPort"])))
            if workload.name != flow.source.name:
                found.add((flow.source.name, workload.name, port))
    return found


def allowed_connections(m: Manifests) -> set[tuple[str, str, int]]:
    """(source, destination workload, container port) of every pod-to-pod connection the
    NetworkPolicies let through, between different workloads."""
    policies = m.of_kind("NetworkPolicy")
    found = set()
    for (source, src), (destination, dst) in itertools.product(pods(m).items(), repeat=2):
        for port in set(dst.ports.values()):
            if source != destination and allowed(policies, src, dst, port):
                found.add((source, destination, port))
    return found
