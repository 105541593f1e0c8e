"""Composition root of the usage service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from interlock.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from interlock.router.v1 import router_pb2_grpc
from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.catalog_cache import CatalogCache
from services.common.channels import open_channel
from services.common.clock import Clock, SystemClock
from services.common.grpc_server import GrpcService, Registration, create_server
from services.usage.callers import CallerResolver
from services.usage.jobs.open import open_job_store
from services.usage.jobs.runner import JobRunner
from services.usage.jobs.servicer import JobServicer
from services.usage.reports import Reports
from services.usage.servicer import ModelStatsServicer, UsageServicer
from services.usage.settings import UsageSettings
from services.usage.store.open import open_store

log = logging.getLogger(__name__)
SERVICE_NAME = usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name
STATS_SERVICE_NAME = usage_pb2.DESCRIPTOR.services_by_name["ModelStatsService"].full_name
JOB_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
CATALOG_WAIT_SECONDS = 30.0


async def _follow_catalog(cache: CatalogCache) -> None:
    # Recording events must not wait for catalog: only the reports need the key records,
    # and until they arrive only the admin key is recognised.
    try:
        await cache.start(CATALOG_WAIT_SECONDS)
    except TimeoutError:
        log.warning("catalog not reachable after %.0fs; API keys are unknown until it is", CATALOG_WAIT_SECONDS)


async def build_server(settings: UsageSettings, *, clock: Clock | None = None) -> GrpcService:
    clock = clock or SystemClock()
    store = open_store(settings)
    catalog_channel = open_channel(settings.catalog_addr)
    cache = CatalogCache(catalog_channel, watch_keys=True)
    following = asyncio.create_task(_follow_catalog(cache))
    callers = CallerResolver(cache, settings.key_pepper, settings.admin_key_hash, clock)
    reports = Reports(store, callers, clock)
    # Jobs live here, beside the ledger's store, as their own gRPC service (separable later).
    job_store = open_job_store(settings)
    router_channel = open_channel(settings.router_addr)
    runner = JobRunner(
        job_store,
        router_pb2_grpc.RouterServiceStub(router_channel),
        cache,
        clock,
        call_timeout_seconds=settings.jobs_call_timeout_seconds,
        retention_seconds=settings.jobs_retention_hours * 3600,
        lease_seconds=settings.jobs_lease_seconds,
    )
    await runner.start()
    service = create_server(
        settings.listen,
        [
            Registration(
                usage_pb2_grpc.add_UsageServiceServicer_to_server,
                UsageServicer(store, callers, reports, clock=clock),
                SERVICE_NAME,
            ),
            Registration(
                usage_pb2_grpc.add_ModelStatsServiceServicer_to_server,
                ModelStatsServicer(callers, reports),
                STATS_SERVICE_NAME,
            ),
            Registration(
                jobs_pb2_grpc.add_JobServiceServicer_to_server, JobServicer(runner, callers), JOB_SERVICE_NAME
            ),
        ],
    )

    async def close() -> None:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await runner.close()
        await cache.close()
        await catalog_channel.close(grace=None)
        await router_channel.close(grace=None)
        await asyncio.to_thread(store.close)
        await asyncio.to_thread(job_store.close)

    service.cleanups.append(close)
    return service
