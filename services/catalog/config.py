"""Loading and validating the catalog YAML into protobuf snapshots.

Every problem names the file, the key path and what is wrong; a catalog
with any problem is refused whole. Mappings are strict: a key the loader
does not know is an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from interlock.catalog.v1 import catalog_pb2 as pb
from services.catalog.agents import parse_agents
from services.catalog.scoped_evaluators import parse_scoped_evaluators
from services.common.errors import ConfigError
from services.common.evaluators import EvaluatorSpecError, parse_evaluators

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

# The keys each mapping may hold; anything else is refused as a likely typo.
TOP_LEVEL_KEYS: Final = (
    "taken_at",
    "providers",
    "models",
    "profiles",
    "plans",
    "default_plan",
    "agents",
    "evaluators",
)
PROVIDER_KEYS: Final = ("kind", "base_url", "api_key_env", "headers", "timeout_seconds", "api_version")
MODEL_KEYS: Final = (
    "id",
    "type",
    "owned_by",
    "context_window",
    "max_output_tokens",
    "dims",
    "capabilities",
    "pricing",
    "quality",
    "created",
    "deployments",
    "hedging",
    "evaluators",
)
PRICING_KEYS: Final = ("input", "output", "cached_input", "cache_write")
DEPLOYMENT_KEYS: Final = ("provider", "model", "weight", "priority")
PROFILE_KEYS: Final = ("id", "strategy", "candidates", "use_live_scores", "min_live_scores")
PLAN_KEYS: Final = ("id", "requests_per_minute", "tokens_per_minute", "burst")

# The seed's rate-limit plans, used when a catalog has no `plans` section:
# (id, requests per minute, tokens per minute, burst). 0 means custom: no limit from the plan.
DEFAULT_PLANS: Final = (
    ("developer", 60, 60_000, 120),
    ("pro", 300, 300_000, 600),
    ("enterprise", 0, 0, 0),
)

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def default_plans() -> list[pb.Plan]:
    """Fresh messages for DEFAULT_PLANS (messages are mutable, so never shared)."""
    return [
        pb.Plan(id=pid, requests_per_minute=rpm, tokens_per_minute=tpm, burst=burst)
        for pid, rpm, tpm, burst in DEFAULT_PLANS
    ]


class CatalogConfigError(ConfigError):
    """The catalog file is invalid; the message names file, path and problem."""


@dataclass(frozen=True)
class Catalog:
    """One validated catalog snapshot; replaced whole on reload, never mutated."""

    providers: list[pb.Provider]
    models: list[pb.Model]
    plans: list[pb.Plan] = field(default_factory=default_plans)
    # Plan of a key that names none; always one of `plans`.
    default_plan: str = DEFAULT_PLANS[0][0]
    # When the prices in the file were taken, as written there; "" when not stated.
    taken_at: str = ""
    agents: list[pb.Agent] = field(default_factory=list)
    # Evaluators of every request of a project or a key (services.catalog.scoped_evaluators).
    scoped_evaluators: list[pb.ScopedEvaluators] = field(default_factory=list)


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser when PyYAML was built with it: about ten times faster
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (YAML forbids them; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            text += f" ({exc.context} that started at line {exc.context_mark.line + 1})"
        return text
    return str(exc)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> CatalogConfigError:
        return CatalogConfigError(f"{self.source}: {path}: {problem}")

    def mapping(self, value: object, path: str) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a mapping")
        return value

    def only(self, node: Mapping[Any, Any], allowed: tuple[str, ...], path: str) -> None:
        for key in node:
            if key not in allowed:
                raise self.fail(f"{path}.{key}", f"unknown key (expected one of: {', '.join(allowed)})")

    def seq(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "must be a list")
        return value

    def item_path(self, section: str, index: int, node: Mapping[Any, Any]) -> str:
        """`models[2](gpt-4o)` when the item has a usable id, else `models[2]`."""
        ident = node.get("id")
        return f"{section}[{index}]({ident})" if isinstance(ident, str) and ident else f"{section}[{index}]"

    def string(self, node: Mapping[Any, Any], key: str, path: str, default: str | None = None) -> str:
        value = node.get(key, default)
        if value is None:
            raise self.fail(f"{path}.{key}", "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(f"{path}.{key}", "must be a non-empty string")
        return value

    def number(self, node: Mapping[Any, Any], key: str, path: str, default: float = 0.0) -> float:
        value = node.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f"{path}.{key}", "must be a number")
        if value < 0:
            raise self.fail(f"{path}.{key}", f"must not be negative (got {value})")
        return float(value)

    def integer(self, node: Mapping[Any, Any], key: str, path: str, default: int = 0, maximum: int = _INT64_MAX) -> int:
        value = node.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{path}.{key}", "must be an integer")
        if value < 0:
            raise self.fail(f"{path}.{key}", f"must not be negative (got {value})")
        if value > maximum:
            raise self.fail(f"{path}.{key}", f"must be at most {maximum} (got {value})")
        return value


def _boolean(r: _Reader, node: Mapping[str, Any], key: str, path: str) -> bool:
    value = node.get(key, False)
    if not isinstance(value, bool):
        raise r.fail(f"{path}.{key}", "must be true or false")
    return value


def load_catalog(path: Path, env: Mapping[str, str]) -> Catalog:
    """Read and validate a catalog file; env tells which provider keys are set."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CatalogConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CatalogConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    return parse_catalog(document, str(path), env)


def parse_catalog(document: object, source: str, env: Mapping[str, str]) -> Catalog:
    """Validate an already-parsed document; source names it in every error."""
    r = _Reader(source)
    if document is None:
        raise r.fail("(top level)", "is empty (expected a mapping with providers, models and profiles)")
    root = r.mapping(document, "(top level)")
    for key in root:
        if key not in TOP_LEVEL_KEYS:
            raise r.fail(str(key), f"unknown top-level key (expected one of: {', '.join(TOP_LEVEL_KEYS)})")

    taken_at = root.get("taken_at", "")
    if isinstance(taken_at, datetime.date):  # YAML reads an unquoted 2025-10-01 as a date
        taken_at = taken_at.isoformat()
    if not isinstance(taken_at, str):
        raise r.fail("taken_at", "must be a date or a string")

    providers: dict[str, pb.Provider] = {}
    for pid, raw in r.mapping(root.get("providers") or {}, "providers").items():
        path = f"providers.{pid}"
        if not isinstance(pid, str) or not pid:
            raise r.fail(path, "a provider id must be a non-empty string (quote it in YAML)")
        node = r.mapping(raw, path)
        r.only(node, PROVIDER_KEYS, path)
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
        headers: dict[str, str] = {}
        for name, value in r.mapping(node.get("headers") or {}, f"{path}.headers").items():
            if not isinstance(name, str) or not name:
                raise r.fail(f"{path}.headers.{name}", "a header name must be a non-empty string")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise r.fail(f"{path}.headers.{name}", "must be a string")
            headers[name] = str(value)
        api_version = node.get("api_version", "")
        if not isinstance(api_version, str) or (kind == "azure" and not api_version):
            raise r.fail(f"{path}.api_version", "is required for azure providers (such as 2024-10-21)")
        if api_version and kind != "azure":
            raise r.fail(f"{path}.api_version", "is only for azure providers")
        providers[pid] = pb.Provider(
            id=pid,
            api_version=api_version,
            kind=PROVIDER_KINDS[kind],
            base_url=base_url.rstrip("/"),
            api_key_env=key_env,
            headers=headers,
            timeout_seconds=r.number(node, "timeout_seconds", path, 60.0) or 60.0,
            available=(not key_env) or bool(env.get(key_env)),
        )

    models: dict[str, pb.Model] = {}
    for i, raw in enumerate(r.seq(root.get("models"), "models")):
        node = r.mapping(raw, f"models[{i}]")
        path = r.item_path("models", i, node)
        r.only(node, MODEL_KEYS, path)
        mid = r.string(node, "id", path)
        if mid in models:
            raise r.fail(f"{path}.id", f"duplicate model id {mid!r}")
        mtype = r.string(node, "type", path, "chat")
        if mtype not in MODEL_TYPES:
            raise r.fail(f"{path}.type", f"unknown model type {mtype!r} (expected chat, completion or embedding)")
        pricing = r.mapping(node.get("pricing") or {}, f"{path}.pricing")
        r.only(pricing, PRICING_KEYS, f"{path}.pricing")
        deployments = r.seq(node.get("deployments"), f"{path}.deployments")
        if not deployments:
            raise r.fail(f"{path}.deployments", "a model needs at least one deployment")
        model = pb.Model(
            id=mid,
            type=MODEL_TYPES[mtype],
            owned_by=str(node.get("owned_by") or ""),
            context_window=r.integer(node, "context_window", path, 8192),
            max_output_tokens=r.integer(node, "max_output_tokens", path, 4096),
            dims=r.integer(node, "dims", path, 0, _INT32_MAX),
            capabilities=[str(c) for c in r.seq(node.get("capabilities"), f"{path}.capabilities")],
            pricing=pb.Pricing(
                input_per_million=r.number(pricing, "input", f"{path}.pricing"),
                output_per_million=r.number(pricing, "output", f"{path}.pricing"),
                cached_input_per_million=r.number(pricing, "cached_input", f"{path}.pricing"),
                cache_write_per_million=r.number(pricing, "cache_write", f"{path}.pricing"),
            ),
            created=r.integer(node, "created", path, 1_700_000_000),
            quality=r.integer(node, "quality", path, 0, _INT32_MAX),
            hedging=_boolean(r, node, "hedging", path),
        )
        for j, dep_raw in enumerate(deployments):
            dpath = f"{path}.deployments[{j}]"
            dep = r.mapping(dep_raw, dpath)
            r.only(dep, DEPLOYMENT_KEYS, dpath)
            provider_id = r.string(dep, "provider", dpath)
            if provider_id not in providers:
                raise r.fail(f"{dpath}.provider", f"unknown provider {provider_id!r}")
            model.deployments.append(
                pb.Deployment(
                    provider=provider_id,
                    upstream_model=r.string(dep, "model", dpath, mid),
                    weight=r.number(dep, "weight", dpath, 1.0),
                    priority=r.integer(dep, "priority", dpath, 0, _INT32_MAX),
                )
            )
        if node.get("evaluators") is not None:
            try:
                model.evaluators.extend(parse_evaluators(node["evaluators"], f"{path}.evaluators"))
            except EvaluatorSpecError as exc:
                raise r.fail(exc.path, exc.problem) from exc
        model.provider = model.deployments[0].provider
        model.owned_by = model.owned_by or model.provider
        model.available = any(providers[d.provider].available for d in model.deployments)
        models[mid] = model

    for i, raw in enumerate(r.seq(root.get("profiles"), "profiles")):
        node = r.mapping(raw, f"profiles[{i}]")
        path = r.item_path("profiles", i, node)
        r.only(node, PROFILE_KEYS, path)
        pid = r.string(node, "id", path)
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
            use_live_scores=_boolean(r, node, "use_live_scores", path),
            # Live scores a candidate needs before they replace its static quality; 0: the router's default.
            min_live_scores=r.integer(node, "min_live_scores", path, 0, _INT32_MAX),
        )

    _check_judges(r, models)
    plans = _parse_plans(r, root.get("plans"))
    default_plan = root.get("default_plan", next(iter(plans)))
    if not isinstance(default_plan, str) or not default_plan:
        raise r.fail("default_plan", "must be a non-empty string (a plan id)")
    if default_plan not in plans:
        raise r.fail("default_plan", f"unknown plan {default_plan!r} (defined: {', '.join(plans)})")
    return Catalog(
        providers=list(providers.values()),
        models=list(models.values()),
        plans=list(plans.values()),
        default_plan=default_plan,
        taken_at=taken_at,
        agents=parse_agents(r, root.get("agents"), models),
        scoped_evaluators=parse_scoped_evaluators(r, root.get("evaluators"), models),
    )


def _check_judges(r: _Reader, models: Mapping[str, pb.Model]) -> None:
    """A judge must be a chat model of this catalog (checked once every model is known)."""
    # Models come before profiles (which have no evaluators), so i is the index in `models`.
    for i, model in enumerate(models.values()):
        for j, spec in enumerate(model.evaluators):
            judge = models.get(spec.judge_model) if spec.kind == "judge" else None
            if spec.kind == "judge" and (judge is None or judge.type != pb.MODEL_TYPE_CHAT):
                raise r.fail(
                    f"models[{i}]({model.id}).evaluators[{j}].model", f"{spec.judge_model!r} is not a chat model here"
                )


def _parse_plans(r: _Reader, raw_plans: object) -> dict[str, pb.Plan]:
    if raw_plans is None:
        return {plan.id: plan for plan in default_plans()}
    items = r.seq(raw_plans, "plans")
    if not items:
        raise r.fail("plans", "needs at least one plan (leave the section out for the built-in plans)")
    plans: dict[str, pb.Plan] = {}
    for i, raw in enumerate(items):
        node = r.mapping(raw, f"plans[{i}]")
        path = r.item_path("plans", i, node)
        r.only(node, PLAN_KEYS, path)
        plan_id = r.string(node, "id", path)
        if plan_id in plans:
            raise r.fail(f"{path}.id", f"duplicate plan id {plan_id!r}")
        plans[plan_id] = pb.Plan(
            id=plan_id,
            requests_per_minute=r.integer(node, "requests_per_minute", path),
            tokens_per_minute=r.integer(node, "tokens_per_minute", path),
            burst=r.integer(node, "burst", path),
        )
    return plans
