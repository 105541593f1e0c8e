"""Scaling and disruption: autoscalers that can work, budgets that let nodes drain."""

from __future__ import annotations

from tests.k8s.checks.common import Problems, describe
from tests.support.manifests import Manifests, Workload


def autoscalers_sane(m: Manifests) -> Problems:
    """Every HPA targets an existing workload, minReplicas ≤ maxReplicas, and a CPU target has
    CPU requests on every container to measure against."""
    problems = []
    for hpa in m.of_kind("HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        if not 1 <= low <= high:
            problems.append(f"{describe(hpa)}: minReplicas {low} and maxReplicas {high} are not 1 ≤ min ≤ max")
        ref = spec["scaleTargetRef"]
        target = next((w for w in m.workloads() if (w.kind, w.name) == (ref["kind"], ref["name"])), None)
        if target is None:
            problems.append(f"{describe(hpa)}: target {ref['kind']}/{ref['name']} does not exist")
            continue
        on_cpu = any(x.get("resource", {}).get("name") == "cpu" for x in spec.get("metrics") or [])
        for container in target.containers if on_cpu else []:
            if "cpu" not in (container.get("resources", {}).get("requests") or {}):
                problems.append(f"{describe(hpa)}: {target.name}/{container['name']} has no CPU request to scale on")
    return problems


def _least_replicas(m: Manifests, workload: Workload) -> int:
    """The fewest pods a workload runs: its HPA's floor, else its replicas (default 1)."""
    for hpa in m.of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) == (workload.kind, workload.name):
            return int(hpa["spec"].get("minReplicas", 1))
    return workload.replicas if workload.replicas is not None else 1


def _count(value: int | str, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = int(value[:-1]) * total
        return -(-share // 100) if round_up else share // 100
    return int(value)


def disruption_budgets_leave_room(m: Manifests) -> Problems:
    """Every PDB selects some workload and lets at least one of its pods go at the fewest
    replicas it runs (minAvailable below that count, or maxUnavailable of at least one)."""
    problems = []
    for pdb in m.of_kind("PodDisruptionBudget"):
        spec = pdb["spec"]
        targets = m.selected_workloads(spec.get("selector"))
        if not targets:
            problems.append(f"{describe(pdb)} selects no pods")
        for workload in targets:
            least = _least_replicas(m, workload)
            if "maxUnavailable" in spec:
                room = _count(spec["maxUnavailable"], least, round_up=True)
            else:
                room = least - _count(spec.get("minAvailable", 1), least, round_up=True)
            if room < 1:
                problems.append(f"{describe(pdb)}: with {least} pod(s) of {workload.name}, no pod may ever be evicted")
    return problems
