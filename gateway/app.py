"""The edge application factory: routes, error handlers and a lifespan that
opens the gRPC channels and the catalog cache (no module-level state), and in
co-located mode starts the router inside this process (gateway.colocated)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import dashboard
from gateway.auth import Authenticator
from gateway.context import EdgeContext
from gateway.errors import EXCEPTION_HANDLERS
from gateway.estimate import Estimator
from gateway.metrics import metrics_endpoint, router_interceptors
from gateway.middleware import EdgeMiddleware, MetricsMiddleware
from gateway.quota import QuotaClient
from gateway.responses import json_response
from gateway.routes.agents import agent_result, run_agent
from gateway.routes.chat import create_chat_completion
from gateway.routes.completions import create_completion
from gateway.routes.embeddings import create_embeddings
from gateway.routes.execute import execute, execute_result, model_info
from gateway.routes.messages import count_message_tokens, create_message
from gateway.routes.models import get_model, list_models
from gateway.settings import EdgeSettings
from gateway.transcoder import Transcoder
from interlock.catalog.v1 import catalog_pb2
from interlock.jobs.v1 import jobs_pb2_grpc
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from interlock.router.v1 import router_pb2_grpc
from interlock.usage.v1 import usage_pb2
from services.common import tokens
from services.common.catalog_cache import CatalogCache
from services.common.channels import open_channel
from services.common.clock import Clock, SystemClock

if TYPE_CHECKING:
    from gateway.colocated import ColocatedRouter

CATALOG_WAIT_SECONDS = 30.0
# Keep channels warm between bursts; the services are long-lived neighbours.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


async def health(request: Request) -> Response:
    edge: EdgeContext = request.app.state.edge
    return json_response({"status": "ok", "catalog_version": edge.cache.version})


# Services whose google.api.http rules the edge serves as REST: the admin API on catalog,
# the usage API on usage, and seed 002's stats (camelCase JSON, as the seed shows) on usage.
ADMIN_SERVICES = [catalog_pb2.DESCRIPTOR.services_by_name["AdminService"]]
USAGE_SERVICES = [usage_pb2.DESCRIPTOR.services_by_name["UsageService"]]
STATS_SERVICES = [usage_pb2.DESCRIPTOR.services_by_name["ModelStatsService"]]


def create_app(settings: EdgeSettings, clock: Clock | None = None) -> Starlette:
    clock = clock or SystemClock()
    admin_api = Transcoder(ADMIN_SERVICES, settings.max_body_bytes)
    usage_api = Transcoder(USAGE_SERVICES, settings.max_body_bytes)
    stats_api = Transcoder(STATS_SERVICES, settings.max_body_bytes, proto_field_names=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channels = [
            open_channel(addr, options=CHANNEL_OPTIONS)
            for addr in (settings.catalog_addr, settings.ratelimit_addr, settings.usage_addr)
        ]
        catalog_channel, ratelimit_channel, usage_channel = channels
        admin_api.bind(catalog_channel)
        usage_api.bind(usage_channel)
        stats_api.bind(usage_channel)
        cache = CatalogCache(catalog_channel, watch_keys=True)
        colocated: ColocatedRouter | None = None
        router: router_pb2_grpc.RouterServiceAsyncStub
        try:
            if settings.router is not None:
                # Only here: an edge in microservices mode need not hold the router's modules.
                from gateway.colocated import start_colocated_router  # noqa: PLC0415

                colocated = await start_colocated_router(settings.router, clock=clock, reuse_port=settings.reuse_port)
                router = colocated.stub()
            else:
                router_channel = open_channel(
                    settings.router_addr,
                    options=CHANNEL_OPTIONS,
                    # The router's trailers say how long a request waited on providers (for the overhead metric).
                    interceptors=router_interceptors(),
                )
                channels.append(router_channel)
                router = router_pb2_grpc.RouterServiceStub(router_channel)
            await cache.start(CATALOG_WAIT_SECONDS)
            # Prompt tokens are counted for token quotas: load the tables the catalog's models use
            # now, not on a request (each is tens of MB; one added later loads on first use).
            needed = {tokens.encoding_for(model_id) for model_id in cache.models} or {tokens.O200K_BASE}
            await asyncio.to_thread(tokens.warm_up, sorted(needed))
            quotas = QuotaClient(
                ratelimit_pb2_grpc.RateLimitServiceStub(ratelimit_channel),
                cache,
                clock,
                fail_open=settings.ratelimit_fail_open,
                hold_seconds=math.ceil(settings.request_timeout_seconds),
                ip_limits=settings.ip_limits,
            )
            app.state.edge = EdgeContext(
                settings=settings,
                cache=cache,
                auth=Authenticator(cache, settings.key_pepper, clock),
                router=router,
                quotas=quotas,
                estimator=Estimator(cache, settings.default_completion_tokens),
                # Jobs (execute / poll, agents) are served by the usage process.
                jobs=jobs_pb2_grpc.JobServiceStub(usage_channel),
            )
            yield
            await quotas.drain()
        finally:
            try:
                if colocated is not None:
                    await colocated.close(settings.grace_seconds)
            finally:
                await cache.close()
                for channel in channels:
                    await channel.close(grace=None)

    routes = [
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/embeddings", create_embeddings, methods=["POST"]),
        # Anthropic's Messages API, for its SDKs (errors in its shape: gateway.errors).
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_message_tokens, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        # Seed 002's aiXplain-style execute / poll, model description and agents APIs.
        Route("/api/v2/execute/{model_id:path}", execute, methods=["POST"]),
        Route("/api/v2/data/{request_id}", execute_result, methods=["GET"]),
        Route("/sdk/models/{model_id:path}", model_info, methods=["GET"]),
        Route("/v2/agents/{agent_id}/run", run_agent, methods=["POST"]),
        Route("/sdk/agents/{request_id}/result", agent_result, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        # Unauthenticated, like /healthz: the proxy in front must not route it publicly.
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *admin_api.routes(),
        *usage_api.routes(),
        *stats_api.routes(),
        *dashboard.routes(),
    ]
    return Starlette(
        routes=routes,
        # Metrics outermost, so they see the status the edge middleware settles on.
        middleware=[Middleware(MetricsMiddleware), Middleware(EdgeMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
