"""A local copy of the catalog (and optionally the key and project records),
kept fresh by catalog's watch streams so hot paths never call catalog per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from typing import TypeVar

import grpc

from interlock.catalog.v1 import catalog_pb2 as pb
from interlock.catalog.v1 import catalog_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


class CatalogCache:
    def __init__(self, channel: grpc.aio.Channel, *, watch_keys: bool) -> None:
        self._stub: catalog_pb2_grpc.CatalogServiceAsyncStub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._watch_keys = watch_keys
        self.version = 0
        self.models: dict[str, pb.Model] = {}
        self.providers: dict[str, pb.Provider] = {}
        self.plans: dict[str, pb.Plan] = {}
        self.default_plan = ""
        self.agents: dict[str, pb.Agent] = {}
        # Evaluators of every request of a project / of a key, by project id / key id.
        self.project_evaluators: dict[str, list[pb.Evaluator]] = {}
        self.key_evaluators: dict[str, list[pb.Evaluator]] = {}
        self.keys_by_hash: dict[str, pb.ApiKey] = {}
        # Every project with its limits, by id (only when watching keys).
        self.projects: dict[str, pb.Project] = {}
        self._catalog_ready = asyncio.Event()
        self._keys_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait_seconds: float) -> None:
        """Start watching and wait for the first snapshots."""
        self._tasks.append(asyncio.create_task(self._follow("catalog", self._catalog_stream, self._apply_catalog)))
        waits = [self._catalog_ready.wait()]
        if self._watch_keys:
            self._tasks.append(asyncio.create_task(self._follow("keys", self._keys_stream, self._apply_keys)))
            waits.append(self._keys_ready.wait())
        await asyncio.wait_for(asyncio.gather(*waits), wait_seconds)

    async def catalog_ready(self) -> None:
        """Returns once the first catalog snapshot has arrived."""
        await self._catalog_ready.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _catalog_stream(self) -> AsyncIterable[pb.WatchCatalogResponse]:
        return self._stub.WatchCatalog(pb.WatchCatalogRequest(), wait_for_ready=True)

    def _keys_stream(self) -> AsyncIterable[pb.WatchKeysResponse]:
        return self._stub.WatchKeys(pb.WatchKeysRequest(), wait_for_ready=True)

    def _apply_catalog(self, snapshot: pb.WatchCatalogResponse) -> None:
        # Build new dicts and swap references: readers never see a half-applied snapshot.
        self.models = {m.id: m for m in snapshot.models}
        self.providers = {p.id: p for p in snapshot.providers}
        self.plans = {p.id: p for p in snapshot.plans}
        self.default_plan = snapshot.default_plan
        self.agents = {a.id: a for a in snapshot.agents}
        self.project_evaluators = {s.project: list(s.evaluators) for s in snapshot.scoped_evaluators if s.project}
        self.key_evaluators = {s.key_id: list(s.evaluators) for s in snapshot.scoped_evaluators if s.key_id}
        self.version = snapshot.version
        self._catalog_ready.set()

    def _apply_keys(self, batch: pb.WatchKeysResponse) -> None:
        current = {} if batch.reset else dict(self.keys_by_hash)
        if not batch.reset:
            # Upserts by id: drop the old hash of a rotated key.
            ids = {k.id for k in batch.keys}
            current = {h: k for h, k in current.items() if k.id not in ids}
        for record in batch.keys:
            current[record.secret_hash] = record
        self.keys_by_hash = current
        # Every batch carries the full set of projects: replace, never merge.
        self.projects = {p.id: p for p in batch.projects}
        self._keys_ready.set()

    async def _follow(self, what: str, open_stream: Callable[[], AsyncIterable[T]], apply: Callable[[T], None]) -> None:
        backoff = 0.05
        while True:
            try:
                async for item in open_stream():
                    apply(item)
                    backoff = 0.05
                log.warning("catalog %s watch ended; reconnecting", what)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("catalog %s watch failed (%s); retrying in %.2fs", what, exc.code().name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
