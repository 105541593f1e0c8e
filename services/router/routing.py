"""Turning a requested model (or profile) and route hints into an ordered
list of targets to try.

Order of decisions: resolve the model or profile to candidate models (a
profile orders them by its strategy), expand each to its deployments
(priority tiers in order, weighted shuffle within a tier), append fallback
models, then apply hints (cost ceiling excludes, preferred provider and
latency budget reorder) and keep deployments whose breaker is open out.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.catalog_cache import CatalogCache
from services.common.errors import InvalidRequestError, ModelNotFoundError, UpstreamError
from services.router.breaker import CircuitBreakers
from services.router.providers.base import Target
from services.router.stats import LatencyStats, QualityScores

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
# Completion tokens assumed for a cost estimate when the request sets no limit.
DEFAULT_OUTPUT_ESTIMATE = 256
# router:quality with use_live_scores: scores a candidate needs when the profile sets none.
DEFAULT_MIN_LIVE_SCORES = 5
# Static quality tiers run 1..10 (the catalog's scale); divided by this they compare with live scores (0..1).
QUALITY_TIER_SCALE = 10.0


@dataclass(frozen=True)
class Demand:
    """What this request asks of a deployment, for cost and latency choices."""

    prompt_tokens: int
    max_output_tokens: int
    stream: bool


@dataclass(frozen=True)
class Plan:
    model: cpb.Model
    targets: list[Target]
    reason: str
    # Start a second attempt when the first has no first byte after this long; 0 = never.
    hedge_after_ms: int = 0


def deployment_key(target: Target) -> str:
    """The identity breakers and latency stats are kept under."""
    return f"{target.provider.id}/{target.deployment.upstream_model}"


def cost_usd(model: cpb.Model, usage: pb.Usage) -> float:
    """What a call cost: cached prompt tokens at their own prices where the catalog sets them."""
    price = model.pricing
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    uncached = usage.prompt_tokens - cached - written
    return (
        uncached * price.input_per_million
        + cached * (price.cached_input_per_million or price.input_per_million)
        + written * (price.cache_write_per_million or price.input_per_million)
        + usage.completion_tokens * price.output_per_million
    ) / 1_000_000


def estimated_cost(model: cpb.Model, demand: Demand) -> float:
    output = demand.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE
    return cost_usd(model, pb.Usage(prompt_tokens=demand.prompt_tokens, completion_tokens=output))


class Planner:
    def __init__(
        self,
        cache: CatalogCache,
        supported_kinds: Collection[int],
        *,
        stats: LatencyStats | None = None,
        breakers: CircuitBreakers | None = None,
        rng: random.Random | None = None,
        explore_rate: float = 0.0,
        quality: QualityScores | None = None,
    ) -> None:
        self._cache = cache
        self._quality = quality or QualityScores()
        # Provider kinds this router has an adapter for; others are never tried.
        self._supported = supported_kinds
        self._stats = stats or LatencyStats()
        self._breakers = breakers
        self._rng = rng or random.Random()
        # Share of router:fast requests sent to a random candidate, so a provider that got
        # faster is noticed.
        self._explore = explore_rate

    def _model(self, model_id: str) -> cpb.Model:
        model = self._cache.models.get(model_id)
        if model is None:
            raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
        return model

    def plan(self, model_id: str, types: Collection[int], hints: pb.RouteHints, demand: Demand) -> Plan:
        model = self._model(model_id)
        reason = "direct"
        candidates = [model]
        if model.type == cpb.MODEL_TYPE_PROFILE:
            reason = f"profile:{model.strategy}"
            if model.strategy == "quality" and model.use_live_scores:
                reason += ":live"
            candidates = self._order_profile(model, [self._model(c) for c in model.candidates], demand)
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
            if candidate.type in types and candidate not in candidates:
                candidates.append(candidate)
        targets = [t for c in candidates for t in self._targets(c)]
        targets = self._apply_hints(targets, hints, demand)
        available = [t for t in targets if t.provider.available and t.provider.kind in self._supported]
        if not available:
            raise self._nothing_available(model_id, targets)
        healthy = [t for t in available if self._breakers is None or self._breakers.allows(deployment_key(t))]
        if not healthy:
            wait = min(self._breakers.retry_after(deployment_key(t)) for t in available) if self._breakers else 0
            raise UpstreamError(
                f"Every provider for '{model_id}' is failing; retry shortly.",
                code="providers_failing",
                http_status=503,
                retry_after=max(1.0, wait),
            )
        first = healthy[0].model
        hedge = hints.latency_budget_ms if first.hedging and len(healthy) > 1 else 0
        # The first target that will really be tried decides the context window to check.
        return Plan(model=first, targets=healthy, reason=reason, hedge_after_ms=int(hedge))

    # ------------------------------------------------------------ ordering

    def _expected_ms(self, target: Target, demand: Demand) -> float | None:
        return self._stats.expected(deployment_key(target), first_token=demand.stream)

    def _order_profile(self, profile: cpb.Model, candidates: list[cpb.Model], demand: Demand) -> list[cpb.Model]:
        if profile.strategy == "quality":
            if profile.use_live_scores:
                return sorted(candidates, key=lambda m: -self._live_quality(profile, m))
            return sorted(candidates, key=lambda m: -m.quality)
        if profile.strategy == "cheap":
            return sorted(candidates, key=lambda m: estimated_cost(m, demand))
        if profile.strategy == "fast":
            if self._explore and self._rng.random() < self._explore:
                return self._rng.sample(candidates, len(candidates))

            def speed(model: cpb.Model) -> float:
                # Unmeasured candidates go first so that every one gets measured.
                known = [e for t in self._targets(model) if (e := self._expected_ms(t, demand)) is not None]
                return min(known) if known else -1.0

            return sorted(candidates, key=speed)
        return candidates

    def _live_quality(self, profile: cpb.Model, model: cpb.Model) -> float:
        """The model's recent mean evaluation score, or its static tier on the same 0..1 scale
        until it has enough scores."""
        live = self._quality.average(model.id, profile.min_live_scores or DEFAULT_MIN_LIVE_SCORES)
        return live if live is not None else model.quality / QUALITY_TIER_SCALE

    def _targets(self, model: cpb.Model) -> list[Target]:
        """Deployments by priority tier; a weighted shuffle within each tier spreads load."""
        tiers: dict[int, list[cpb.Deployment]] = {}
        for deployment in model.deployments:
            if deployment.provider in self._cache.providers:
                tiers.setdefault(deployment.priority, []).append(deployment)
        ordered: list[cpb.Deployment] = []
        for priority in sorted(tiers):
            remaining = list(tiers[priority])
            while remaining:
                weights = [max(d.weight, 0.0) or 1e-9 for d in remaining]
                chosen = self._rng.choices(range(len(remaining)), weights=weights)[0]
                ordered.append(remaining.pop(chosen))
        return [Target(model=model, deployment=d, provider=self._cache.providers[d.provider]) for d in ordered]

    def _apply_hints(self, targets: list[Target], hints: pb.RouteHints, demand: Demand) -> list[Target]:
        if hints.cost_ceiling_usd:
            affordable = [t for t in targets if estimated_cost(t.model, demand) <= hints.cost_ceiling_usd]
            if not affordable:
                cheapest = min(estimated_cost(t.model, demand) for t in targets) if targets else 0.0
                raise InvalidRequestError(
                    f"No deployment fits the cost ceiling of ${hints.cost_ceiling_usd:g}; "
                    f"the cheapest is estimated at ${cheapest:.6f} for this request.",
                    code="cost_ceiling_exceeded",
                    param="route.cost_ceiling_usd",
                )
            targets = affordable
        if hints.latency_budget_ms:
            # Stable: those expected to meet the budget (or not yet measured) first.
            budget = hints.latency_budget_ms
            targets.sort(key=lambda t: (e := self._expected_ms(t, demand)) is not None and e > budget)
        if hints.provider:
            targets.sort(key=lambda t: t.provider.id != hints.provider)
        return targets

    def _nothing_available(self, model_id: str, targets: list[Target]) -> UpstreamError:
        unsupported = sorted(
            {_KIND_NAMES.get(t.provider.kind, "?") for t in targets if t.provider.kind not in self._supported}
        )
        missing = sorted(
            {t.provider.api_key_env for t in targets if t.provider.api_key_env and not t.provider.available}
        )
        reasons = [f"set {', '.join(missing)}"] if missing else []
        reasons += [f"this router cannot call {', '.join(unsupported)} providers yet"] if unsupported else []
        return UpstreamError(
            f"No provider for '{model_id}' is available: {'; '.join(reasons) or 'none is configured'}.",
            code="provider_unavailable",
            http_status=503,
        )
