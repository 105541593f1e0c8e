"""Composition root of the router service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from interlock.router.v1 import router_pb2, router_pb2_grpc
from services.common import tokens
from services.common.catalog_cache import CatalogCache
from services.common.channels import open_channel
from services.common.clock import Clock, SystemClock
from services.common.grpc_server import GrpcService, Registration, create_server
from services.common.spool import Spool
from services.router.attempts import AttemptRunner, RetryPolicy
from services.router.breaker import CircuitBreakers
from services.router.evaluation.runner import Evaluations
from services.router.evaluation.score_emitter import ScoreEmitter
from services.router.providers.pool import PooledTransport, ProviderClient
from services.router.providers.registry import build_adapters
from services.router.routing import Planner
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.stats import LatencyStats, QualityScores
from services.router.usage_emitter import UsageEmitter

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
CATALOG_WAIT_SECONDS = 30.0


@dataclass
class Router:
    """A wired router: its servicer, ready to serve over gRPC (build_server) or in the
    edge's own process through an in-process channel (co-located mode), and what closes it."""

    servicer: RouterServicer
    registrations: list[Registration]
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            await cleanup()


async def build_server(
    settings: RouterSettings,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> GrpcService:
    """The router as its own gRPC service (microservices mode)."""
    router = await build_router(settings, clock=clock, transport=transport)
    service = create_server(settings.listen, router.registrations)
    service.cleanups.append(router.close)
    return service


async def build_router(
    settings: RouterSettings,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Router:
    """Wire the router; transport lets tests hand httpx a different real transport."""
    clock = clock or SystemClock()
    # First, so a second process on the same spool file fails fast with a clear message.
    spool = await asyncio.to_thread(Spool.open, settings.usage_spool_path, clock)
    score_spool = await asyncio.to_thread(Spool.open, settings.score_spool_path, clock)
    if settings.warm_tokenizer:
        await asyncio.to_thread(tokens.warm_up)
    catalog_channel = open_channel(settings.catalog_addr)
    usage_channel = open_channel(settings.usage_addr)
    cache = CatalogCache(catalog_channel, watch_keys=False)
    await cache.start(CATALOG_WAIT_SECONDS)
    # One pooled client for every upstream: connections are reused across requests.
    http = ProviderClient(
        transport=transport or PooledTransport(max_idle_per_origin=200, keepalive_expiry=60),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60),
        timeout=httpx.Timeout(60.0, connect=5.0),
    )
    adapters = build_adapters(http, settings.provider_env, settings.demo_token_delay_ms / 1000)
    emitter = UsageEmitter(
        usage_channel, spool, batch_size=settings.usage_batch_size, flush_seconds=settings.usage_flush_seconds
    )
    emitter.start()
    score_emitter = ScoreEmitter(
        usage_channel, score_spool, batch_size=settings.usage_batch_size, flush_seconds=settings.usage_flush_seconds
    )
    score_emitter.start()
    quality = QualityScores()
    evaluations = Evaluations(
        score_emitter.emit,
        quality,
        clock,
        scoped=lambda project, key_id: [
            *cache.project_evaluators.get(project, ()),
            *cache.key_evaluators.get(key_id, ()),
        ],
    )
    stats = LatencyStats()
    breakers = CircuitBreakers(clock, settings.breaker_failures, settings.breaker_cooldown_seconds)
    planner = Planner(
        cache,
        supported_kinds=set(adapters),
        stats=stats,
        breakers=breakers,
        explore_rate=settings.explore_rate,
        quality=quality,
    )
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        deadline_seconds=settings.deadline_seconds,
        backoff_base_seconds=settings.backoff_base_seconds,
        backoff_max_seconds=settings.backoff_max_seconds,
    )
    runner = AttemptRunner(adapters, breakers, stats, policy, clock)
    servicer = RouterServicer(planner, runner, breakers, emitter, clock, evaluations=evaluations)

    async def close() -> None:
        # Evaluations first: their judge calls emit usage events and scores.
        await evaluations.close(wait_seconds=settings.grace_seconds / 2)
        await emitter.close(wait_seconds=settings.grace_seconds)
        await score_emitter.close(wait_seconds=settings.grace_seconds / 2)
        await cache.close()
        await http.aclose()
        await catalog_channel.close(grace=None)
        await usage_channel.close(grace=None)
        await asyncio.to_thread(spool.close)
        await asyncio.to_thread(score_spool.close)

    return Router(
        servicer,
        [Registration(router_pb2_grpc.add_RouterServiceServicer_to_server, servicer, SERVICE_NAME)],
        [close],
    )
