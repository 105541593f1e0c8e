"""InProcessChannel, and the multi-callables it hands the stubs: each starts a call
straight to its handler, or through the client interceptors when there are any."""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import grpc

from services.common.grpc_server import Registration
from services.common.inprocess.base import Metadatum
from services.common.inprocess.calls import Call, UnaryStreamCall, UnaryUnaryCall
from services.common.inprocess.handlers import Dispatcher, default_server_interceptors
from services.common.inprocess.intercepted import (
    Answered,
    Intercepted,
    InterceptedUnaryStreamCall,
    InterceptedUnaryUnaryCall,
    ResponseIterator,
)


def _deadline(loop: asyncio.AbstractEventLoop, timeout: float | None) -> float | None:
    return None if timeout is None else loop.time() + timeout


def _as_metadata(metadata: Any) -> grpc.aio.Metadata:
    if isinstance(metadata, grpc.aio.Metadata):
        return metadata
    return grpc.aio.Metadata(*(metadata or ()))


def _invocation(metadata: grpc.aio.Metadata | None) -> tuple[Metadatum, ...]:
    return tuple(Metadatum(key, value) for key, value in metadata or ())


def _method_name(method: str | bytes) -> str:
    """grpc.aio hands interceptors the method as bytes; handlers are found by str."""
    return method.decode() if isinstance(method, bytes) else method


class _MultiCallable(abc.ABC):
    """What both kinds share; each kind names its call objects and how its interceptors
    are called."""

    call: ClassVar[type[Call]]
    intercepted: ClassVar[type[Intercepted]]

    def __init__(self, channel: InProcessChannel, method: str, interceptors: Sequence[Any]) -> None:
        self._channel = channel
        self._method = method
        # grpc.aio hands interceptors the method as bytes.
        self._wire_method: Any = method.encode()
        self._interceptors = tuple(interceptors)

    @abc.abstractmethod
    async def _intercept(self, interceptor: Any, continuation: Any, details: Any, request: Any) -> Any:
        """Run one interceptor of this kind."""

    @abc.abstractmethod
    def _settle(self, answer: Any, beneath: Any) -> Any:
        """The call an interceptor's answer stands for (beneath: the call its continuation made)."""

    def _start(
        self, method: str, request: Any, timeout: float | None, metadata: Any, loop: asyncio.AbstractEventLoop
    ) -> Call:
        channel = self._channel
        return self.call(
            channel._dispatcher,
            channel._active,
            method,
            request,
            deadline=_deadline(loop, timeout),
            metadata=_invocation(metadata),
            loop=loop,
        )

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        loop = self._channel._open()
        if not self._interceptors:
            return self._start(self._method, request, timeout, metadata, loop)
        interceptors = self._interceptors
        last: list[Any] = [None]

        async def run(index: int, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            if index == len(interceptors):
                method = self._method if details.method is self._wire_method else _method_name(details.method)
                last[0] = self._start(method, request, details.timeout, details.metadata, loop)
            else:
                continuation = functools.partial(run, index + 1)
                answer = await self._intercept(interceptors[index], continuation, details, request)
                last[0] = self._settle(answer, last[0])
            return last[0]

        details = grpc.aio.ClientCallDetails(
            self._wire_method,
            timeout,
            _as_metadata(metadata),
            credentials,
            wait_for_ready,
        )
        return self.intercepted(lambda: run(0, details, request), _deadline(loop, timeout), loop)


class _UnaryUnaryMultiCallable(_MultiCallable):
    call = UnaryUnaryCall
    intercepted = InterceptedUnaryUnaryCall

    async def _intercept(self, interceptor: Any, continuation: Any, details: Any, request: Any) -> Any:
        return await interceptor.intercept_unary_unary(continuation, details, request)

    def _settle(self, answer: Any, beneath: Any) -> Any:
        return answer if isinstance(answer, grpc.aio.UnaryUnaryCall) else Answered(answer)


class _UnaryStreamMultiCallable(_MultiCallable):
    call = UnaryStreamCall
    intercepted = InterceptedUnaryStreamCall

    async def _intercept(self, interceptor: Any, continuation: Any, details: Any, request: Any) -> Any:
        return await interceptor.intercept_unary_stream(continuation, details, request)

    def _settle(self, answer: Any, beneath: Any) -> Any:
        # An interceptor may answer with an iterator of its own: the call beneath stays the call.
        return answer if isinstance(answer, grpc.aio.UnaryStreamCall) else ResponseIterator(beneath, answer)


class InProcessChannel(grpc.aio.Channel):
    """A grpc.aio.Channel whose calls go to servicers in this process.

    registrations: what the servers would serve (add_*_to_server, servicer, name).
    server_interceptors: run for every call as a grpc.aio server runs them (default: the
    chain of services.common.grpc_server.create_server). interceptors: client interceptors,
    filed by kind and run as grpc.aio runs them. Only unary-unary and unary-stream methods."""

    def __init__(
        self,
        registrations: Sequence[Registration],
        *,
        server_interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,  # type: ignore[type-arg]
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        chain = default_server_interceptors() if server_interceptors is None else server_interceptors
        self._dispatcher = Dispatcher(registrations, chain)
        self._unary: list[Any] = []
        self._stream: list[Any] = []
        for interceptor in interceptors or ():
            # Like grpc.aio: each interceptor is filed under the first kind it is.
            if isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor):
                self._unary.append(interceptor)
            elif isinstance(interceptor, grpc.aio.UnaryStreamClientInterceptor):
                self._stream.append(interceptor)
            elif isinstance(interceptor, grpc.aio.ClientInterceptor):
                raise ValueError(f"{interceptor!r}: only unary-unary and unary-stream calls are carried in process")
            else:
                raise ValueError(f"interceptor {interceptor!r} is not a grpc.aio client interceptor")
        self._active: set[Call] = set()
        self._closed = False

    def _open(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        return asyncio.get_running_loop()

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        # No serializers: the proto objects themselves cross.
        return _UnaryUnaryMultiCallable(self, method, self._unary)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryStreamMultiCallable(self, method, self._stream)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None) -> Any:
        raise NotImplementedError("client-streaming methods are not carried in process")

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None) -> Any:
        raise NotImplementedError("bidirectional methods are not carried in process")

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.SHUTDOWN if self._closed else grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        # The state only ever changes by close(); nothing to wait for here.
        return None

    async def channel_ready(self) -> None:
        return None

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls; after grace seconds (none: at once) cancel those still running."""
        if self._closed:
            return
        self._closed = True
        calls = list(self._active)
        if grace and calls:
            # code() waits for the call's end, reading nothing.
            await asyncio.wait([asyncio.ensure_future(call.code()) for call in calls], timeout=grace)
        for call in calls:
            call.cancel()

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)
