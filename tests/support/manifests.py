"""The Kubernetes manifests in k8s/ as data: render a kustomization, then look things up
the way the cluster would (selectors, ports by name or number, a container's environment
with its ConfigMaps, Secrets and $(VAR) references resolved).

Used by the offline checks (tests/k8s/) and by the cluster rehearsal (rehearsal.py),
so both read the manifests with one set of rules.
"""

from __future__ import annotations

import atexit
import base64
import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# Every kustomization a user can apply or build on. "a+b" is kustomization a with component b
# on top (compose): how an overlay takes a component after its own patches (README "Kubernetes").
TARGETS = (
    "base",
    "overlays/dev",
    "overlays/production",
    "overlays/colocated",
    "overlays/production+components/colocated-router",
)
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# The one image every Interlock process runs (Dockerfile); third-party images are datastores.
INTERLOCK_IMAGE = "interlock"
# Settings that hold the address of something a process connects to.
ADDRESS_SUFFIXES = ("_ADDR", "_URL")
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379, "http": 80, "https": 443}

Obj = dict[str, Any]
# Secret name -> key -> value, as an operator (or a test) would create them.
SecretValues = Mapping[str, Mapping[str, str]]


class RenderError(RuntimeError):
    """kustomize refused a kustomization."""


@functools.cache
def _rendered_text(directory: Path) -> str:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def compose(target: str, root: Path = K8S) -> Path:
    """A kustomization (in a directory of its own) that is root/<base> with the components named
    after it, "overlays/production+components/colocated-router": the base's own patches run
    first, then each component's. Paths are relative, as kustomize refuses absolute roots."""
    base, *components = target.split("+")
    directory = Path(tempfile.mkdtemp(prefix="kustomization-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    up = Path(*[".."] * len(directory.resolve().parts[1:]))

    def relative(path: str) -> str:
        return str(up / (root / path).resolve().relative_to("/"))

    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(base)],
        "components": [relative(c) for c in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


def render(target: str | Path) -> list[Obj]:
    """The objects `kubectl kustomize` renders for k8s/<target> (a composition "a+b" too, see
    compose) or a directory; a fresh copy each call."""
    if isinstance(target, str):
        target = compose(target) if "+" in target else K8S / target
    return [doc for doc in yaml.safe_load_all(_rendered_text(target.resolve())) if doc]


def load(path: Path) -> list[Obj]:
    """The objects in a plain multi-document YAML file (the broken-manifest fixtures)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) or a Service's plain map against labels.
    An empty selector selects everything, as in a NetworkPolicy."""
    if not selector:
        return True
    plain = {k: v for k, v in selector.items() if k not in ("matchLabels", "matchExpressions")}
    wanted = {**plain, **(selector.get("matchLabels") or {})}
    if any(labels.get(key) != value for key, value in wanted.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if (
            (op == "In" and (not present or labels[key] not in values))
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$ escapes, unknown stay as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(one, value)


@dataclass(frozen=True)
class Address:
    """Where a setting points: a host (a Service's name when in-cluster) and a port."""

    host: str
    port: int


def parse_address(value: str) -> Address | None:
    """host:port, or a URL (scheme://[user[:password]@]host[:port]/...); None for anything else."""
    if "://" in value:
        try:
            parts = urlsplit(value)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return None
        if not parts.hostname or port is None:
            return None
        return Address(parts.hostname, port)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or "/" in host:
        return None
    return Address(host.strip("[]"), int(port_text))


def service_name(host: str, namespace: str) -> str | None:
    """The Service a host name means inside the namespace: `name`, `name.ns`, `name.ns.svc[.cluster.local]`."""
    labels = host.rstrip(".").split(".")
    if len(labels) == 1:
        return labels[0]
    if labels[1] == namespace and (len(labels) == 2 or labels[2] == "svc"):
        return labels[0]
    return None


@dataclass
class Workload:
    kind: str
    name: str
    obj: Obj

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.obj["spec"]["template"].get("metadata", {}).get("labels") or {})

    @property
    def pod_spec(self) -> Obj:
        return dict(self.obj["spec"]["template"]["spec"])

    @property
    def containers(self) -> list[Obj]:
        return list(self.pod_spec.get("containers") or [])

    @property
    def all_containers(self) -> list[Obj]:
        return [*(self.pod_spec.get("initContainers") or []), *self.containers]

    @property
    def replicas(self) -> int | None:
        value = self.obj["spec"].get("replicas")
        return None if value is None else int(value)

    @property
    def is_interlock(self) -> bool:
        return all(is_interlock_image(c.get("image", "")) for c in self.containers)


def image_name(image: str) -> str:
    """The repository part of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def is_interlock_image(image: str) -> bool:
    """Interlock's image, from whichever registry an overlay names."""
    return image_name(image).rsplit("/", 1)[-1] == INTERLOCK_IMAGE


def container_port(container: Mapping[str, Any], port: int | str) -> int | None:
    """The container port a probe or Service targetPort names, by number or by name."""
    for entry in container.get("ports") or []:
        if (isinstance(port, int) and entry.get("containerPort") == port) or entry.get("name") == port:
            return int(entry["containerPort"])
    return None


class Manifests:
    """One rendered set of objects, indexed."""

    def __init__(self, objects: list[Obj]) -> None:
        self.objects = objects

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.objects)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> Obj | None:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    @property
    def namespace(self) -> str:
        for obj in self.objects:
            if obj.get("metadata", {}).get("namespace"):
                return str(obj["metadata"]["namespace"])
        return "default"

    def workloads(self) -> list[Workload]:
        return [Workload(o["kind"], o["metadata"]["name"], o) for o in self.objects if o.get("kind") in WORKLOAD_KINDS]

    def workload(self, name: str) -> Workload:
        for workload in self.workloads():
            if workload.name == name:
                return workload
        raise KeyError(name)

    def selected_workloads(self, selector: Mapping[str, Any] | None) -> list[Workload]:
        return [w for w in self.workloads() if selects(selector, w.pod_labels)]

    def service_target(self, name: str, port: int) -> tuple[Obj, Obj] | None:
        """The Service of that name and its port entry, if it has that port."""
        service = self.get("Service", name)
        if service is None:
            return None
        for entry in service["spec"].get("ports") or []:
            if entry.get("port") == port:
                return service, entry
        return None

    def config_map(self, name: str) -> dict[str, str] | None:
        obj = self.get("ConfigMap", name)
        return None if obj is None else dict(obj.get("data") or {})

    def secret(self, name: str, supplied: SecretValues) -> dict[str, str] | None:
        if name in supplied:
            return dict(supplied[name])
        obj = self.get("Secret", name)
        if obj is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {**data, **(obj.get("stringData") or {})}

    def environment(self, container: Mapping[str, Any], secrets: SecretValues | None = None) -> dict[str, str]:
        """The variables the container starts with, as the kubelet builds them: envFrom in order,
        then env (later wins), $(VAR) expanded in env values. Values from Secrets nobody supplied
        are left out, as are optional references that do not resolve."""
        supplied = secrets or {}
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.config_map(source["configMapRef"]["name"])
            else:
                data = self.secret(source["secretRef"]["name"], supplied)
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
                continue
            ref = var.get("valueFrom") or {}
            if "configMapKeyRef" in ref:
                data = self.config_map(ref["configMapKeyRef"]["name"])
                key = ref["configMapKeyRef"]["key"]
            elif "secretKeyRef" in ref:
                data = self.secret(ref["secretKeyRef"]["name"], supplied)
                key = ref["secretKeyRef"]["key"]
            else:  # fieldRef / resourceFieldRef: nothing a check or a local run can know
                continue
            if data is not None and key in data:
                env[var["name"]] = data[key]
        return env


@dataclass(frozen=True)
class Flow:
    """A connection a process is configured to open: to a Service's port."""

    source: Workload
    service: str
    port: int
    # Where the address came from, for messages.
    via: str


def envoy_config(m: Manifests, workload: Workload) -> Obj | None:
    """The Envoy bootstrap a workload mounts from a ConfigMap, if it runs Envoy."""
    for volume in workload.pod_spec.get("volumes") or []:
        name = (volume.get("configMap") or {}).get("name")
        data = m.config_map(name) if name else None
        if data and "envoy.yaml" in data:
            config: Obj = yaml.safe_load(data["envoy.yaml"])
            return config
    return None


def envoy_upstreams(config: Obj) -> Iterator[tuple[str, str, int]]:
    """(cluster, host, port) of every endpoint of an Envoy bootstrap's static clusters."""
    for cluster in config.get("static_resources", {}).get("clusters") or []:
        for group in cluster.get("load_assignment", {}).get("endpoints") or []:
            for endpoint in group.get("lb_endpoints") or []:
                socket = endpoint["endpoint"]["address"]["socket_address"]
                yield cluster["name"], socket["address"], int(socket["port_value"])


def flows(m: Manifests, secrets: SecretValues | None = None) -> list[Flow]:
    """Every connection to a Service name the processes are configured to open: the addresses
    in their environment (INTERLOCK_*_ADDR, *_URL hosts; ConfigMaps and the Secret values
    given resolved) and Envoy's upstreams. Hosts that name no Service here (a provider's
    API, a managed database) are outside the cluster and left out."""
    found: list[Flow] = []
    for workload in m.workloads():
        for container in workload.all_containers:
            for var, value in m.environment(container, secrets).items():
                address = parse_address(value) if var.endswith(ADDRESS_SUFFIXES) else None
                name = None if address is None else service_name(address.host, m.namespace)
                if address is not None and name is not None:
                    found.append(Flow(workload, name, address.port, f"{container['name']} {var}"))
        for cluster, host, port in envoy_upstreams(envoy_config(m, workload) or {}):
            name = service_name(host, m.namespace)
            if name is not None:
                found.append(Flow(workload, name, port, f"Envoy cluster {cluster}"))
    return found


_SECRET_COMMAND = re.compile(r"\bkubectl\b.*?\bcreate secret (generic|tls) ([a-z0-9.-]+)(.*)")
_LITERAL = re.compile(r"""--from-literal=([\w.-]+)=("[^"]*"|'[^']*'|\S+)""")


def documented_secrets(readme: Path = REPO / "README.md") -> dict[str, dict[str, str]]:
    """The Secrets README.md's "Kubernetes" section tells an operator to create
    (`kubectl create secret ...`): name -> key -> the example value, as written."""
    text = readme.read_text()
    start = text.find("\n## Kubernetes")
    if start < 0:
        return {}
    end = text.find("\n## ", start + 1)
    section = re.sub(r"\\\n\s*", " ", text[start : end if end > 0 else len(text)])
    found: dict[str, dict[str, str]] = {}
    for line in section.splitlines():
        match = _SECRET_COMMAND.search(line)
        if match is None:
            continue
        kind, name, rest = match.groups()
        keys = found.setdefault(name, {})
        if kind == "tls":
            keys.setdefault("tls.crt", "")
            keys.setdefault("tls.key", "")
        for key, value in _LITERAL.findall(rest):
            keys.setdefault(key, value.strip("\"'"))
    return found
