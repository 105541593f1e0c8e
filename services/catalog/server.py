"""Composition root of the catalog service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from interlock.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from services.catalog import records
from services.catalog.admin import AdminServicer, register_bootstrap
from services.catalog.config import load_catalog
from services.catalog.guard import AdminGuard
from services.catalog.reloader import CatalogReloader
from services.catalog.servicer import CatalogServicer
from services.catalog.settings import CatalogSettings
from services.catalog.store import KeyStore
from services.catalog.store.sqlite import SqliteKeyStore
from services.common.broadcast import Latest
from services.common.clock import Clock, SystemClock
from services.common.grpc_server import GrpcService, Registration, create_server

log = logging.getLogger(__name__)
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
ADMIN_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def open_store(settings: CatalogSettings) -> KeyStore:
    if settings.database_url:
        from services.catalog.store.postgres import PostgresKeyStore  # noqa: PLC0415 - only when configured

        return PostgresKeyStore(settings.database_url, schema=settings.database_schema)
    return SqliteKeyStore(settings.database)


async def build_server(settings: CatalogSettings, clock: Clock | None = None) -> GrpcService:
    clock = clock or SystemClock()
    catalog = Latest(load_catalog(settings.config_path, settings.provider_env))
    store = await asyncio.to_thread(open_store, settings)
    if settings.bootstrap_key:
        await asyncio.to_thread(
            register_bootstrap, store, settings.bootstrap_key, settings.key_pepper, int(clock.now())
        )

    def read_records() -> tuple[int, records.KeySnapshot]:
        # The version first: a write racing the reads is seen again at the next poll, never missed.
        version = store.version()
        return version, records.KeySnapshot.of(store.list_keys(), store.list_projects())

    seen, first = await asyncio.to_thread(read_records)
    key_records = Latest(first)

    async def refresh_records() -> None:
        nonlocal seen
        seen, snapshot = await asyncio.to_thread(read_records)
        key_records.publish(snapshot)

    async def follow_other_replicas() -> None:
        # Replicas sharing a database see each other's writes through the change counter.
        while True:
            await asyncio.sleep(settings.keys_poll_seconds)
            try:
                if await asyncio.to_thread(store.version) != seen:
                    await refresh_records()
            except Exception:
                log.warning("could not poll the key store", exc_info=True)

    def is_live_key(secret_hash: str) -> bool:
        return any(k.secret_hash == secret_hash and not k.revoked for k in key_records.value.keys)

    admin = AdminServicer(
        store,
        AdminGuard(settings.admin_key_hash, settings.key_pepper, is_live_key),
        plans=lambda: [p.id for p in catalog.value.plans],
        on_changed=refresh_records,
        pepper=settings.key_pepper,
        clock=clock,
    )
    reloader = CatalogReloader(
        settings.config_path, settings.provider_env, catalog.publish, poll_seconds=settings.config_poll_seconds
    )
    service = create_server(
        settings.listen,
        [
            Registration(
                catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
                CatalogServicer(catalog, key_records),
                CATALOG_SERVICE,
            ),
            Registration(catalog_pb2_grpc.add_AdminServiceServicer_to_server, admin, ADMIN_SERVICE),
        ],
    )
    tasks = [asyncio.create_task(follow_other_replicas()), asyncio.create_task(reloader.run())]
    loop = asyncio.get_running_loop()
    reloader.install_sighup(loop)

    async def close() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(store.close)

    service.cleanups.append(close)
    return service
