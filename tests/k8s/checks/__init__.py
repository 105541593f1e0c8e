"""Consistency checks over rendered manifests that a schema cannot make: one function per
check, each returning the problems it found (empty: consistent). test_consistency.py runs
every one against every kustomization and against a broken fixture of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.k8s.checks.common import Problems
from tests.k8s.checks.network import network_allows_flows, network_policies_select_pods
from tests.k8s.checks.pods import (
    labels_recommended,
    references_resolve,
    resources_bounded,
    security_contexts_restricted,
    termination_covers_drain,
    writable_paths_mounted,
)
from tests.k8s.checks.scaling import autoscalers_sane, disruption_budgets_leave_room
from tests.k8s.checks.wiring import (
    addresses_resolve,
    envoy_config_matches_pod,
    probe_ports_match,
    service_ports_match,
    services_select_pods,
)

CHECKS: dict[str, Callable[..., Problems]] = {
    check.__name__: check
    for check in (
        services_select_pods,
        service_ports_match,
        probe_ports_match,
        addresses_resolve,
        envoy_config_matches_pod,
        autoscalers_sane,
        disruption_budgets_leave_room,
        references_resolve,
        security_contexts_restricted,
        resources_bounded,
        writable_paths_mounted,
        termination_covers_drain,
        labels_recommended,
        network_policies_select_pods,
        network_allows_flows,
    )
}


__all__ = [
    "CHECKS",
    "Problems",
    "addresses_resolve",
    "autoscalers_sane",
    "disruption_budgets_leave_room",
    "envoy_config_matches_pod",
    "labels_recommended",
    "network_allows_flows",
    "network_policies_select_pods",
    "probe_ports_match",
    "references_resolve",
    "resources_bounded",
    "security_contexts_restricted",
    "service_ports_match",
    "services_select_pods",
    "termination_covers_drain",
    "writable_paths_mounted",
]
