"""Pods: what they refer to exists, and they run restricted, bounded and drain in time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tests.k8s.checks.common import Problems, describe
from tests.support.manifests import Manifests, Obj, Workload, is_interlock_image

RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component")
INTERLOCK_UID = 10001
# The services' drain on SIGTERM when INTERLOCK_GRACE_SECONDS is unset (services/*/settings.py).
DEFAULT_GRACE_SECONDS = 5.0


def _references(workload: Workload) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key or None, optional) for every ConfigMap and Secret a pod refers to."""
    for container in workload.all_containers:
        for source in container.get("envFrom") or []:
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in source:
                    yield kind, source[field]["name"], None, bool(source[field].get("optional"))
        for var in container.get("env") or []:
            ref = var.get("valueFrom") or {}
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if field in ref:
                    yield kind, ref[field]["name"], ref[field]["key"], bool(ref[field].get("optional"))
    for volume in workload.pod_spec.get("volumes") or []:
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None, bool(volume["configMap"].get("optional"))
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None, bool(volume["secret"].get("optional"))


def references_resolve(m: Manifests, operator_secrets: Mapping[str, Mapping[str, str]]) -> Problems:
    """Every ConfigMap and Secret a pod refers to exists with the key it names, unless the
    reference is optional or the Secret is one an operator creates (operator_secrets: the
    documented ones, name -> keys); every ServiceAccount a pod runs as exists."""
    problems = []
    for workload in m.workloads():
        account = workload.pod_spec.get("serviceAccountName")
        if account and m.get("ServiceAccount", account) is None:
            problems.append(f"{workload.name}: ServiceAccount {account!r} does not exist")
        for kind, name, key, optional in _references(workload):
            if optional:
                continue
            data: Mapping[str, str] | None = (
                m.config_map(name) if kind == "ConfigMap" else m.secret(name, {}) or operator_secrets.get(name)
            )
            if data is None:
                problems.append(f"{workload.name}: {kind} {name!r} does not exist and is not documented")
            elif key is not None and key not in data:
                problems.append(f"{workload.name}: {kind} {name!r} has no key {key!r}")
    return problems


def security_contexts_restricted(m: Manifests) -> Problems:
    """Every container runs under the restricted Pod Security profile and more: non-root (uid
    10001 for Interlock's image), read-only root filesystem, no privilege escalation, every
    capability dropped, the runtime's seccomp profile; no host namespaces or host paths."""
    problems = []
    for workload in m.workloads():
        pod = workload.pod_spec
        pod_context = pod.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(host):
                problems.append(f"{workload.name}: {host}")
        if any("hostPath" in v for v in pod.get("volumes") or []):
            problems.append(f"{workload.name}: hostPath volume")
        for container in workload.all_containers:
            where = f"{workload.name}/{container['name']}"
            own = container.get("securityContext") or {}

            def setting(key: str, own: Obj = own, pod: Obj = pod_context) -> Any:
                return own.get(key, pod.get(key))

            uid = setting("runAsUser")
            if setting("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if uid is None or uid == 0:
                problems.append(f"{where}: runAsUser must be a non-zero uid")
            elif is_interlock_image(container.get("image", "")) and uid != INTERLOCK_UID:
                problems.append(f"{where}: runs as uid {uid}, not the image's {INTERLOCK_UID}")
            if own.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if own.get("privileged"):
                problems.append(f"{where}: privileged")
            capabilities = own.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    return problems


def resources_bounded(m: Manifests) -> Problems:
    """Every container requests and limits CPU and memory, and requests no more than it may use."""
    problems = []
    for workload in m.workloads():
        for container in workload.all_containers:
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(bound) or {}):
                        problems.append(f"{workload.name}/{container['name']}: no {resource} {bound[:-1]}")
    return problems


def writable_paths_mounted(m: Manifests) -> Problems:
    """With a read-only root filesystem, /tmp and the data directory (INTERLOCK_DATA_DIR) of
    every container are writable volumes."""
    problems = []
    for workload in m.workloads():
        for container in workload.all_containers:
            mounts = {v["mountPath"].rstrip("/"): v for v in container.get("volumeMounts") or []}
            wanted = ["/tmp"]
            data_dir = m.environment(container).get("INTERLOCK_DATA_DIR")
            if data_dir:
                wanted.append(data_dir.rstrip("/"))
            for path in wanted:
                mount = mounts.get(path)
                if mount is None or mount.get("readOnly"):
                    problems.append(f"{workload.name}/{container['name']}: {path} is not a writable mount")
    return problems


def _interlock_command(container: Obj) -> str | None:
    """The module a container runs with `python -m`, if it is an Interlock process."""
    command = [*(container.get("command") or []), *(container.get("args") or [])]
    if len(command) >= 3 and command[0] == "python" and command[1] == "-m":
        return str(command[2])
    return None


def termination_covers_drain(m: Manifests) -> Problems:
    """terminationGracePeriodSeconds covers the preStop pause plus an Interlock process's
    shutdown: the gRPC drain and the cleanups after it, each bounded by INTERLOCK_GRACE_SECONDS
    (services/common/grpc_server.py; the router's ledger flush is one of those cleanups). A
    co-located edge (INTERLOCK_EDGE_MODE=colocated) drains its HTTP requests first, then the
    router's gRPC listener, then the router's usage events (gateway/app.py): one stage more."""
    problems = []
    for workload in m.workloads():
        period = int(workload.pod_spec.get("terminationGracePeriodSeconds", 30))
        for container in workload.containers:
            if _interlock_command(container) is None:
                continue
            env = m.environment(container)
            grace = float(env.get("INTERLOCK_GRACE_SECONDS") or DEFAULT_GRACE_SECONDS)
            pause = int(((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0))
            stages = 3 if env.get("INTERLOCK_EDGE_MODE") == "colocated" else 2
            if period <= pause + stages * grace:
                problems.append(
                    f"{workload.name}: terminationGracePeriodSeconds {period} does not exceed preStop {pause} s "
                    f"+ {stages} × INTERLOCK_GRACE_SECONDS {grace:g} s"
                )
    return problems


def labels_recommended(m: Manifests) -> Problems:
    """Every object and pod template carries app.kubernetes.io/name, part-of and component."""
    problems = []
    for obj in m:
        if obj["kind"] in ("Namespace",):
            continue
        labels = obj["metadata"].get("labels") or {}
        if obj["kind"] == "NetworkPolicy":
            wanted: tuple[str, ...] = ("app.kubernetes.io/part-of", "app.kubernetes.io/component")
        else:
            wanted = RECOMMENDED_LABELS
        problems += [f"{describe(obj)}: no label {label}" for label in wanted if label not in labels]
    for workload in m.workloads():
        problems += [
            f"{workload.name} pod template: no label {label}"
            for label in RECOMMENDED_LABELS
            if label not in workload.pod_labels
        ]
    return problems
