"""Composition root of the catalog service."""

from __future__ import annotations

import asyncio

from interlock.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from services.catalog.config import load_catalog
from services.catalog.keystore import KeyStore
from services.catalog.servicer import CatalogServicer
from services.catalog.settings import CatalogSettings
from services.common.broadcast import Latest
from services.common.grpc_server import GrpcService, Registration, create_server

SERVICE_NAME = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


def build_server(settings: CatalogSettings) -> GrpcService:
    catalog = Latest(load_catalog(settings.config_path, settings.provider_env))
    store = KeyStore(settings.database, settings.key_pepper)
    if settings.bootstrap_key:
        store.put_bootstrap(settings.bootstrap_key)
    api_keys = Latest(store.all())
    servicer = CatalogServicer(catalog, api_keys)
    service = create_server(
        settings.listen,
        [Registration(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE_NAME)],
    )

    async def close_store() -> None:
        await asyncio.to_thread(store.close)

    service.cleanups.append(close_store)
    return service
