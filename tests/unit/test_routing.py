"""The planner, the circuit breaker and backoff: pure logic with injected clock and randomness."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.clock import ManualClock
from services.common.errors import InvalidRequestError, UpstreamError
from services.router.attempts import AttemptRunner, RetryPolicy
from services.router.breaker import CircuitBreakers, State
from services.router.routing import Demand, Planner, deployment_key
from services.router.stats import LatencyStats, QualityScores

CHAT = (cpb.MODEL_TYPE_CHAT,)
DEMAND = Demand(prompt_tokens=1000, max_output_tokens=1000, stream=False)
KINDS = {cpb.PROVIDER_KIND_OPENAI, cpb.PROVIDER_KIND_DEMO}


def provider(pid: str, kind: int = cpb.PROVIDER_KIND_OPENAI, available: bool = True) -> cpb.Provider:
    return cpb.Provider(id=pid, kind=kind, base_url="http://x", available=available)


def model(mid: str, *deployments: tuple[str, float, int], price: float = 1.0, **extra: Any) -> cpb.Model:
    return cpb.Model(
        id=mid,
        type=cpb.MODEL_TYPE_CHAT,
        pricing=cpb.Pricing(input_per_million=price, output_per_million=price),
        deployments=[cpb.Deployment(provider=p, upstream_model=mid, weight=w, priority=r) for p, w, r in deployments],
        **extra,
    )


def cache(*models: cpb.Model, providers: list[cpb.Provider] | None = None) -> Any:
    providers = providers or [provider("a"), provider("b"), provider("c")]
    return SimpleNamespace(models={m.id: m for m in models}, providers={p.id: p for p in providers})


def order(plan: Any) -> list[str]:
    return [t.provider.id for t in plan.targets]


def test_priority_tiers_come_in_order_and_weights_spread_within_a_tier() -> None:
    m = model("m", ("a", 3.0, 0), ("b", 1.0, 0), ("c", 1.0, 1))
    planner = Planner(cache(m), KINDS, rng=random.Random(7))
    firsts = Counter(order(planner.plan("m", CHAT, pb.RouteHints(), DEMAND))[0] for _ in range(4000))
    assert set(firsts) == {"a", "b"}
    assert 0.70 < firsts["a"] / 4000 < 0.80  # weight 3 of 4
    assert all(order(planner.plan("m", CHAT, pb.RouteHints(), DEMAND))[-1] == "c" for _ in range(50))


def test_hints_provider_cost_ceiling_and_fallback() -> None:
    primary = model("m", ("a", 1, 0), ("b", 1, 1), price=10.0)
    backup = model("backup", ("c", 1, 0), price=0.1)
    planner = Planner(cache(primary, backup), KINDS)
    assert order(planner.plan("m", CHAT, pb.RouteHints(provider="b"), DEMAND))[0] == "b"
    assert order(planner.plan("m", CHAT, pb.RouteHints(fallbacks=["backup"]), DEMAND)) == ["a", "b", "c"]
    # 2000 tokens at $10/M is $0.02: a $0.01 ceiling leaves only the fallback.
    capped = planner.plan("m", CHAT, pb.RouteHints(fallbacks=["backup"], cost_ceiling_usd=0.01), DEMAND)
    assert order(capped) == ["c"]
    with pytest.raises(InvalidRequestError) as info:
        planner.plan("m", CHAT, pb.RouteHints(cost_ceiling_usd=0.01), DEMAND)
    assert info.value.code == "cost_ceiling_exceeded" and info.value.param == "route.cost_ceiling_usd"


def test_profiles_order_by_quality_cost_and_latency() -> None:
    good = model("good", ("a", 1, 0), price=5.0, quality=9)
    cheap = model("cheap", ("b", 1, 0), price=0.1, quality=1)

    def profile(strategy: str) -> cpb.Model:
        return cpb.Model(
            id=f"router:{strategy}", type=cpb.MODEL_TYPE_PROFILE, strategy=strategy, candidates=["good", "cheap"]
        )

    stats = LatencyStats()
    planner = Planner(cache(good, cheap, profile("quality"), profile("cheap"), profile("fast")), KINDS, stats=stats)
    assert planner.plan("router:quality", CHAT, pb.RouteHints(), DEMAND).model.id == "good"
    assert planner.plan("router:cheap", CHAT, pb.RouteHints(), DEMAND).model.id == "cheap"
    stats.observe("a/good", 300, first_token=False)
    assert planner.plan("router:fast", CHAT, pb.RouteHints(), DEMAND).model.id == "cheap"  # unmeasured first
    stats.observe("b/cheap", 100, first_token=False)
    assert planner.plan("router:fast", CHAT, pb.RouteHints(), DEMAND).model.id == "cheap"
    for _ in range(10):
        stats.observe("b/cheap", 900, first_token=False)  # cheap got slow
    assert planner.plan("router:fast", CHAT, pb.RouteHints(), DEMAND).model.id == "good"
    plan = planner.plan("router:fast", CHAT, pb.RouteHints(), DEMAND)
    assert plan.reason == "profile:fast"


def test_quality_profile_follows_live_scores_only_when_asked_and_only_with_enough() -> None:
    tier9, tier2 = model("tier9", ("a", 1, 0), quality=9), model("tier2", ("b", 1, 0), quality=2)
    live = cpb.Model(id="router:live", type=cpb.MODEL_TYPE_PROFILE, strategy="quality",
                     candidates=["tier9", "tier2"], use_live_scores=True, min_live_scores=3)  # fmt: skip
    static = cpb.Model(
        id="router:static", type=cpb.MODEL_TYPE_PROFILE, strategy="quality", candidates=["tier9", "tier2"]
    )
    scores = QualityScores()
    planner = Planner(cache(tier9, tier2, live, static), KINDS, quality=scores)

    def chosen(profile: str) -> str:
        return planner.plan(profile, CHAT, pb.RouteHints(), DEMAND).model.id

    assert chosen("router:live") == "tier9"
    for _ in range(2):
        scores.observe("tier2", 1.0)
    assert chosen("router:live") == "tier9"  # two scores are not enough yet: 0.9 (tier 9) vs 0.2 (tier 2)
    scores.observe("tier2", 0.95)
    assert chosen("router:live") == "tier2"  # 0.98 live beats tier 9's 0.9
    for _ in range(3):
        scores.observe("tier9", 0.99)
    assert chosen("router:live") == "tier9"
    assert chosen("router:static") == "tier9"
    assert planner.plan("router:live", CHAT, pb.RouteHints(), DEMAND).reason == "profile:quality:live"


def test_unsupported_kinds_and_missing_keys_are_a_clear_503() -> None:
    m = model("m", ("anth", 1, 0), ("nokey", 1, 0))
    providers = [provider("anth", kind=cpb.PROVIDER_KIND_ANTHROPIC), provider("nokey", available=False)]
    providers[1].api_key_env = "SOME_KEY"
    with pytest.raises(UpstreamError) as info:
        Planner(cache(m, providers=providers), KINDS).plan("m", CHAT, pb.RouteHints(), DEMAND)
    assert info.value.http_status == 503 and info.value.code == "provider_unavailable"
    assert "SOME_KEY" in info.value.message and "anthropic" in info.value.message


def test_open_breakers_keep_deployments_out_and_all_open_is_a_503() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock, threshold=2, cooldown_seconds=10)
    m = model("m", ("a", 1, 0), ("b", 1, 1))
    planner = Planner(cache(m), KINDS, breakers=breakers)
    breakers.failure("a/m")
    assert order(planner.plan("m", CHAT, pb.RouteHints(), DEMAND)) == ["a", "b"]  # one failure: still closed
    breakers.failure("a/m")
    assert order(planner.plan("m", CHAT, pb.RouteHints(), DEMAND)) == ["b"]
    breakers.failure("b/m", retry_after=30)
    with pytest.raises(UpstreamError) as info:
        planner.plan("m", CHAT, pb.RouteHints(), DEMAND)
    assert info.value.code == "providers_failing" and info.value.retry_after == pytest.approx(10)


def test_breaker_half_open_allows_one_probe_then_closes_or_reopens() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock, threshold=3, cooldown_seconds=5)
    for _ in range(3):
        breakers.failure("k")
    assert breakers.state("k") is State.OPEN and not breakers.allows("k")
    clock.advance(5)
    assert breakers.state("k") is State.HALF_OPEN and breakers.allows("k")
    breakers.begin("k")
    assert not breakers.allows("k")  # one probe at a time
    breakers.failure("k")  # the probe failed: open again
    assert breakers.state("k") is State.OPEN
    clock.advance(5)
    breakers.begin("k")
    breakers.success("k")
    assert breakers.state("k") is State.CLOSED and breakers.allows("k")


def test_retry_after_opens_the_breaker_for_that_long_even_below_the_threshold() -> None:
    clock = ManualClock()
    breakers = CircuitBreakers(clock, threshold=5, cooldown_seconds=1)
    breakers.failure("k", retry_after=7)
    assert not breakers.allows("k") and breakers.retry_after("k") == pytest.approx(7)
    clock.advance(7)
    assert breakers.allows("k")


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=5, deadline_seconds=10, backoff_base_seconds=0.1, backoff_max_seconds=0.5)
    runner = AttemptRunner(
        {}, CircuitBreakers(ManualClock(), 3, 1), LatencyStats(), policy, ManualClock(), rng=random.Random(1)
    )
    for failures, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        waits = [runner.backoff(failures) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > ceiling * 0.8  # full jitter covers the range


def test_deployment_key_names_provider_and_upstream_model() -> None:
    m = model("m", ("a", 1, 0))
    plan = Planner(cache(m), KINDS).plan("m", CHAT, pb.RouteHints(), DEMAND)
    assert deployment_key(plan.targets[0]) == "a/m"


def test_cost_prices_cached_and_cache_written_prompt_tokens_apart() -> None:
    from services.router.routing import cost_usd

    m = cpb.Model(
        pricing=cpb.Pricing(
            input_per_million=3.0, output_per_million=15.0, cached_input_per_million=0.3, cache_write_per_million=3.75
        )
    )
    usage = pb.Usage(
        prompt_tokens=1_000_000, cached_tokens=600_000, cache_write_tokens=100_000, completion_tokens=10_000
    )
    # 300k uncached at $3, 600k cached at $0.30, 100k written at $3.75, 10k out at $15.
    assert cost_usd(m, usage) == pytest.approx(0.9 + 0.18 + 0.375 + 0.15)
    plain = cpb.Model(pricing=cpb.Pricing(input_per_million=3.0, output_per_million=15.0))
    assert cost_usd(plain, usage) == pytest.approx(3.0 + 0.15)  # no cache prices: all at the input price
