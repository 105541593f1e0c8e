"""Turning a requested model (or profile) and route hints into an ordered
list of targets to try."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.catalog_cache import CatalogCache
from services.common.errors import InvalidRequestError, ModelNotFoundError, UpstreamError
from services.router.providers.base import Target

_TYPE_ENDPOINT = {
    cpb.MODEL_TYPE_CHAT: "/v1/chat/completions",
    cpb.MODEL_TYPE_COMPLETION: "/v1/completions",
    cpb.MODEL_TYPE_EMBEDDING: "/v1/embeddings",
}


_KIND_NAMES = {
    cpb.PROVIDER_KIND_DEMO: "demo",
    cpb.PROVIDER_KIND_OPENAI: "openai",
    cpb.PROVIDER_KIND_ANTHROPIC: "anthropic",
    cpb.PROVIDER_KIND_GEMINI: "gemini",
    cpb.PROVIDER_KIND_AZURE: "azure",
}


@dataclass(frozen=True)
class Plan:
    model: cpb.Model
    targets: list[Target]
    reason: str


class Planner:
    def __init__(self, cache: CatalogCache, supported_kinds: Collection[int]) -> None:
        self._cache = cache
        # Provider kinds this router has an adapter for; others are never tried.
        self._supported = supported_kinds

    def _model(self, model_id: str) -> cpb.Model:
        model = self._cache.models.get(model_id)
        if model is None:
            raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
        return model

    def plan(self, model_id: str, types: Collection[int], hints: pb.RouteHints) -> Plan:
        model = self._model(model_id)
        reason = "direct"
        candidates = [model]
        if model.type == cpb.MODEL_TYPE_PROFILE:
            reason = f"profile:{model.strategy}"
            candidates = [self._model(c) for c in model.candidates]
        for candidate in candidates:
            if candidate.type not in types:
                endpoint = _TYPE_ENDPOINT.get(candidate.type, "another endpoint")
                raise InvalidRequestError(
                    f"The model '{candidate.id}' is not supported on this endpoint; use {endpoint}.",
                    code="model_not_supported",
                    param="model",
                )
        for fallback in hints.fallbacks:
            candidate = self._model(fallback)
            if candidate.type in types:
                candidates.append(candidate)
        targets = [t for c in candidates for t in self._targets(c)]
        if hints.provider:
            # A stable sort keeps catalog order within "preferred" and "the rest".
            targets.sort(key=lambda t: t.provider.id != hints.provider)
        available = [t for t in targets if t.provider.available and t.provider.kind in self._supported]
        if not available:
            unsupported = sorted(
                {_KIND_NAMES.get(t.provider.kind, "?") for t in targets if t.provider.kind not in self._supported}
            )
            missing = sorted(
                {t.provider.api_key_env for t in targets if t.provider.api_key_env and not t.provider.available}
            )
            reasons = [f"set {', '.join(missing)}"] if missing else []
            reasons += [f"this router cannot call {', '.join(unsupported)} providers yet"] if unsupported else []
            raise UpstreamError(
                f"No provider for '{model_id}' is available: {'; '.join(reasons) or 'none is configured'}.",
                code="provider_unavailable",
                http_status=503,
            )
        # The first target that will really be tried decides the context window to check.
        return Plan(model=available[0].model, targets=available, reason=reason)

    def _targets(self, model: cpb.Model) -> list[Target]:
        deployments = sorted(model.deployments, key=lambda d: (d.priority, -d.weight))
        return [
            Target(model=model, deployment=d, provider=self._cache.providers[d.provider])
            for d in deployments
            if d.provider in self._cache.providers
        ]


def cost_usd(model: cpb.Model, usage: pb.Usage) -> float:
    return (
        usage.prompt_tokens * model.pricing.input_per_million
        + usage.completion_tokens * model.pricing.output_per_million
    ) / 1_000_000
