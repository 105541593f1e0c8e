"""Loading and validating the catalog YAML into protobuf snapshots.

Every problem names the file, the key path and what is wrong; a catalog
with any problem is refused whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from interlock.catalog.v1 import catalog_pb2 as pb
from services.common.errors import ConfigError

PROVIDER_KINDS = {
    "demo": pb.PROVIDER_KIND_DEMO,
    "openai": pb.PROVIDER_KIND_OPENAI,
    "anthropic": pb.PROVIDER_KIND_ANTHROPIC,
    "gemini": pb.PROVIDER_KIND_GEMINI,
    "azure": pb.PROVIDER_KIND_AZURE,
}
MODEL_TYPES = {
    "chat": pb.MODEL_TYPE_CHAT,
    "completion": pb.MODEL_TYPE_COMPLETION,
    "embedding": pb.MODEL_TYPE_EMBEDDING,
}
PROFILE_STRATEGIES = ("fast", "quality", "cheap")


class CatalogConfigError(ConfigError):
    """The catalog file is invalid; the message names file, path and problem."""


@dataclass(frozen=True)
class Catalog:
    providers: list[pb.Provider]
    models: list[pb.Model]


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> CatalogConfigError:
        return CatalogConfigError(f"{self.source}: {path}: {problem}")

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a mapping")
        return value

    def seq(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "must be a list")
        return value

    def string(self, node: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
        value = node.get(key, default)
        if value is None:
            raise self.fail(f"{path}.{key}", "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(f"{path}.{key}", "must be a non-empty string")
        return value

    def number(self, node: Mapping[str, Any], key: str, path: str, default: float = 0.0) -> float:
        value = node.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{path}.{key}", "must be a number")
        if value < 0:
            raise self.fail(f"{path}.{key}", f"must not be negative (got {value})")
        return float(value)

    def integer(self, node: Mapping[str, Any], key: str, path: str, default: int = 0) -> int:
        value = node.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{path}.{key}", "must be an integer")
        if value < 0:
            raise self.fail(f"{path}.{key}", f"must not be negative (got {value})")
        return value


def load_catalog(path: Path, env: Mapping[str, str]) -> Catalog:
    """Read and validate a catalog file; env tells which provider keys are set."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_catalog(document, str(path), env)


def parse_catalog(document: object, source: str, env: Mapping[str, str]) -> Catalog:
    r = _Reader(source)
    root = r.mapping(document, "(top level)")
    unknown = set(root) - {"providers", "models", "profiles", "taken_at"}
    if unknown:
        raise r.fail(sorted(unknown)[0], "unknown top-level key")

    providers: dict[str, pb.Provider] = {}
    for pid, raw in r.mapping(root.get("providers") or {}, "providers").items():
        path = f"providers.{pid}"
        if not isinstance(pid, str) or not pid:
            raise r.fail(path, "a provider id must be a non-empty string (quote it in YAML)")
        node = r.mapping(raw, path)
        kind = r.string(node, "kind", path)
        if kind not in PROVIDER_KINDS:
            raise r.fail(
                f"{path}.kind", f"unknown provider kind {kind!r} (expected one of {', '.join(PROVIDER_KINDS)})"
            )
        key_env = node.get("api_key_env", "")
        if not isinstance(key_env, str):
            raise r.fail(f"{path}.api_key_env", "must be a string")
        base_url = node.get("base_url", "")
        if not isinstance(base_url, str) or (kind != "demo" and not base_url):
            raise r.fail(f"{path}.base_url", "is required for this provider kind")
        headers = r.mapping(node.get("headers") or {}, f"{path}.headers")
        providers[pid] = pb.Provider(
            id=pid,
            kind=PROVIDER_KINDS[kind],
            base_url=base_url.rstrip("/"),
            api_key_env=key_env,
            headers={str(k): str(v) for k, v in headers.items()},
            timeout_seconds=r.number(node, "timeout_seconds", path, 60.0) or 60.0,
            available=(not key_env) or bool(env.get(key_env)),
        )

    models: dict[str, pb.Model] = {}
    for i, raw in enumerate(r.seq(root.get("models"), "models")):
        path = f"models[{i}]"
        node = r.mapping(raw, path)
        mid = r.string(node, "id", path)
        path = f"models[{i}]({mid})"
        if mid in models:
            raise r.fail(f"{path}.id", f"duplicate model id {mid!r}")
        mtype = r.string(node, "type", path, "chat")
        if mtype not in MODEL_TYPES:
            raise r.fail(f"{path}.type", f"unknown model type {mtype!r} (expected chat, completion or embedding)")
        pricing = r.mapping(node.get("pricing") or {}, f"{path}.pricing")
        deployments = r.seq(node.get("deployments"), f"{path}.deployments")
        if not deployments:
            raise r.fail(f"{path}.deployments", "a model needs at least one deployment")
        model = pb.Model(
            id=mid,
            type=MODEL_TYPES[mtype],
            owned_by=str(node.get("owned_by") or ""),
            context_window=r.integer(node, "context_window", path, 8192),
            max_output_tokens=r.integer(node, "max_output_tokens", path, 4096),
            dims=r.integer(node, "dims", path, 0),
            capabilities=[str(c) for c in r.seq(node.get("capabilities"), f"{path}.capabilities")],
            pricing=pb.Pricing(
                input_per_million=r.number(pricing, "input", f"{path}.pricing"),
                output_per_million=r.number(pricing, "output", f"{path}.pricing"),
            ),
            created=r.integer(node, "created", path, 1_700_000_000),
            quality=r.integer(node, "quality", path, 0),
        )
        for j, dep_raw in enumerate(deployments):
            dpath = f"{path}.deployments[{j}]"
            dep = r.mapping(dep_raw, dpath)
            provider_id = r.string(dep, "provider", dpath)
            if provider_id not in providers:
                raise r.fail(f"{dpath}.provider", f"unknown provider {provider_id!r}")
            model.deployments.append(
                pb.Deployment(
                    provider=provider_id,
                    upstream_model=r.string(dep, "model", dpath, mid),
                    weight=r.number(dep, "weight", dpath, 1.0),
                    priority=r.integer(dep, "priority", dpath, 0),
                )
            )
        model.provider = model.deployments[0].provider
        model.owned_by = model.owned_by or model.provider
        model.available = any(providers[d.provider].available for d in model.deployments)
        models[mid] = model

    for i, raw in enumerate(r.seq(root.get("profiles"), "profiles")):
        path = f"profiles[{i}]"
        node = r.mapping(raw, path)
        pid = r.string(node, "id", path)
        path = f"profiles[{i}]({pid})"
        if pid in models:
            raise r.fail(f"{path}.id", f"duplicate model id {pid!r}")
        strategy = r.string(node, "strategy", path)
        if strategy not in PROFILE_STRATEGIES:
            raise r.fail(f"{path}.strategy", f"unknown strategy {strategy!r} (expected fast, quality or cheap)")
        candidates = [str(c) for c in r.seq(node.get("candidates"), f"{path}.candidates")]
        if not candidates:
            raise r.fail(f"{path}.candidates", "a profile needs at least one candidate model")
        for c in candidates:
            if c not in models:
                raise r.fail(f"{path}.candidates", f"unknown model {c!r}")
            if models[c].type == pb.MODEL_TYPE_PROFILE:
                raise r.fail(f"{path}.candidates", f"{c!r} is a profile; candidates must be models")
        if len({models[c].type for c in candidates}) > 1:
            raise r.fail(f"{path}.candidates", "candidates must all be of one type (chat, completion or embedding)")
        models[pid] = pb.Model(
            id=pid,
            type=pb.MODEL_TYPE_PROFILE,
            owned_by="router",
            provider="router",
            strategy=strategy,
            candidates=candidates,
            created=1_700_000_000,
            available=any(models[c].available for c in candidates),
        )
    return Catalog(providers=list(providers.values()), models=list(models.values()))
