"""The method handlers of the registrations, found through the server interceptors."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import grpc

from services.common.grpc_server import ErrorMappingInterceptor, Registration
from services.common.inprocess.base import Metadatum
from services.common.metrics import MetricsInterceptor

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class HandlerCallDetails(NamedTuple):
    """What server interceptors and generic handlers are given (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[Metadatum, ...]


def default_server_interceptors() -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The chain create_server installs: metrics first, so it sees the mapped status."""
    return [MetricsInterceptor(), ErrorMappingInterceptor()]


class _Collector:
    """Stands in for a grpc.aio.Server when a registration's add_*_to_server runs, so the
    method handlers are collected from the generated code, none listed by hand."""

    def __init__(self) -> None:
        self.methods: dict[str, Handler] = {}
        self.generic: list[grpc.GenericRpcHandler[Any, Any]] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}"] = handler


class Dispatcher:
    """Finds a method's handler through the server interceptors, as grpc.aio's server does
    for every call (an interceptor may look at the call's metadata)."""

    def __init__(self, registrations: Sequence[Registration], interceptors: Sequence[grpc.aio.ServerInterceptor]):  # type: ignore[type-arg]
        collector = _Collector()
        for registration in registrations:
            registration.add(registration.servicer, collector)  # type: ignore[arg-type]
        self._methods = collector.methods
        self._generic = collector.generic
        self._interceptors = tuple(interceptors)

    def _query(self, details: HandlerCallDetails) -> Handler | None:
        found = self._methods.get(details.method)
        if found is not None:
            return found
        for generic in self._generic:
            found = generic.service(details)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    async def _intercept(self, index: int, details: HandlerCallDetails) -> Handler | None:
        if index == len(self._interceptors):
            return self._query(details)
        continuation = functools.partial(self._intercept, index + 1)
        return await self._interceptors[index].intercept_service(continuation, details)  # type: ignore[arg-type]

    async def find(self, method: str, metadata: tuple[Metadatum, ...]) -> Handler | None:
        details = HandlerCallDetails(method, metadata)
        if not self._interceptors:
            return self._query(details)
        return await self._intercept(0, details)
