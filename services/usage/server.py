"""Composition root of the usage service."""

from __future__ import annotations

import asyncio

from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.grpc_server import GrpcService, Registration, create_server
from services.usage.servicer import UsageServicer
from services.usage.settings import UsageSettings
from services.usage.store.open import open_store

SERVICE_NAME = usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name


def build_server(settings: UsageSettings) -> GrpcService:
    store = open_store(settings)
    service = create_server(
        settings.listen,
        [Registration(usage_pb2_grpc.add_UsageServiceServicer_to_server, UsageServicer(store), SERVICE_NAME)],
    )

    async def close_store() -> None:
        await asyncio.to_thread(store.close)

    service.cleanups.append(close_store)
    return service
