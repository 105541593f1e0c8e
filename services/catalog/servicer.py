"""CatalogService: serves the loaded catalog and the key records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from interlock.catalog.v1 import catalog_pb2 as pb
from interlock.catalog.v1 import catalog_pb2_grpc
from services.catalog.config import Catalog
from services.catalog.records import KeySnapshot
from services.common.broadcast import Latest
from services.common.errors import ModelNotFoundError

Context = grpc.aio.ServicerContext[Any, Any]


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Latest[Catalog], key_records: Latest[KeySnapshot]) -> None:
        self._catalog = catalog
        self._keys = key_records

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        models = [
            m
            for m in self._catalog.value.models
            if (
                not request.provider
                or request.provider in {d.provider for d in m.deployments}
                or request.provider == m.provider
            )
            and (not request.type or request.type == m.type)
        ]
        return pb.ListModelsResponse(models=models)

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        for model in self._catalog.value.models:
            if model.id == request.id:
                return pb.GetModelResponse(model=model)
        raise ModelNotFoundError(f"The model '{request.id}' does not exist.", param="model")

    async def WatchCatalog(
        self, request: pb.WatchCatalogRequest, context: Context
    ) -> AsyncIterator[pb.WatchCatalogResponse]:
        async for version, catalog in self._catalog.watch():
            yield pb.WatchCatalogResponse(
                version=version,
                providers=catalog.providers,
                models=catalog.models,
                plans=catalog.plans,
                default_plan=catalog.default_plan,
                agents=catalog.agents,
                scoped_evaluators=catalog.scoped_evaluators,
            )

    async def WatchKeys(self, request: pb.WatchKeysRequest, context: Context) -> AsyncIterator[pb.WatchKeysResponse]:
        # Whole snapshots: key tables are small, and a reset can never leave a revoked key behind.
        # Every message carries every project too, so a project's new limits arrive the same way.
        async for _version, snapshot in self._keys.watch():
            yield pb.WatchKeysResponse(reset=True, keys=snapshot.keys, projects=snapshot.projects)
