"""The call objects of calls made through client interceptors, as grpc.aio's
InterceptedCall and its kin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.inprocess.base import EOF, LOCAL_CANCEL_DETAILS, DoneCallback, remaining
from services.common.inprocess.inline import Inline


class Answered(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A call an interceptor answered with a plain response (grpc.aio's UnaryUnaryCallResponse)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Any:
        yield from ()
        return self._response

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: DoneCallback) -> None:
        callback(self)

    def time_remaining(self) -> float | None:
        return None

    async def initial_metadata(self) -> Any:
        return None

    async def trailing_metadata(self) -> Any:
        return None

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None


class ResponseIterator(grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    """A call whose messages an interceptor replaced with an iterator of its own
    (grpc.aio's UnaryStreamCallResponseIterator): the rest goes to the call beneath."""

    def __init__(self, call: Any, messages: Any) -> None:
        self._call = call
        self._messages = messages

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages.__aiter__()  # type: ignore[no-any-return]

    async def read(self) -> Any:
        raise NotImplementedError("read() is not available once an interceptor replaced the messages")

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: DoneCallback) -> None:
        self._call.add_done_callback(callback)

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._call.details()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        return None


class Intercepted:
    """A call run through client interceptors, as grpc.aio's InterceptedCall: the chain runs
    inline in the first task that uses the call; then every method goes to the call the
    chain settled on."""

    def __init__(self, chain: Callable[[], Awaitable[Any]], deadline: float | None, loop: asyncio.AbstractEventLoop):
        self._chain = chain
        self._deadline = deadline
        self._loop = loop
        self._call: Any = None
        self._failure: BaseException | None = None
        self._cancelled_early = False
        self._pending: list[DoneCallback] = []
        self._run = Inline(self._resolve)

    async def _resolve(self) -> None:
        if self._cancelled_early:
            return
        try:
            self._call = await self._chain()
        except Exception as exc:  # noqa: BLE001 - kept, and raised to every user of the call
            self._failure = exc
        except asyncio.CancelledError:
            self._cancelled_early = True
            raise
        for callback in self._pending:
            self._add_callback(callback)
        self._pending.clear()

    def _add_callback(self, callback: DoneCallback) -> None:
        if self._call is None:
            callback(self)
        else:
            self._call.add_done_callback(lambda _: callback(self))

    async def _resolved(self) -> Any:
        try:
            await self._run.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if self._failure is not None:
            raise self._failure
        if self._call is None:
            raise asyncio.CancelledError()
        return self._call

    async def _ask(
        self,
        of_call: Callable[[Any], Awaitable[Any]],
        of_failure: Callable[[grpc.aio.AioRpcError], Any],
        if_cancelled: Any,
    ) -> Any:
        """What the call the chain settled on answers; if the chain failed with an RPC
        error, what that error says; if it was cancelled, if_cancelled."""
        try:
            call = await self._resolved()
        except grpc.aio.AioRpcError as exc:
            return of_failure(exc)
        except asyncio.CancelledError:
            return if_cancelled
        return await of_call(call)

    def cancel(self) -> bool:
        if self._run.finished:
            return self._call.cancel() if self._call is not None else False
        if self._cancelled_early:
            return False
        self._cancelled_early = True
        self._run.cancel()
        return True

    def cancelled(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancelled())
        if isinstance(self._failure, grpc.aio.AioRpcError):
            return self._failure.code() == grpc.StatusCode.CANCELLED
        return self._cancelled_early

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._run.finished or self._cancelled_early

    def add_done_callback(self, callback: DoneCallback) -> None:
        if self._run.finished or self._cancelled_early:
            self._add_callback(callback)
        else:
            self._pending.append(callback)

    def time_remaining(self) -> float | None:
        return remaining(self._deadline, self._loop)

    async def initial_metadata(self) -> Any:
        return await self._ask(lambda call: call.initial_metadata(), grpc.aio.AioRpcError.initial_metadata, None)

    async def trailing_metadata(self) -> Any:
        return await self._ask(lambda call: call.trailing_metadata(), grpc.aio.AioRpcError.trailing_metadata, None)

    async def code(self) -> grpc.StatusCode:
        cancelled = grpc.StatusCode.CANCELLED
        return await self._ask(lambda call: call.code(), grpc.aio.AioRpcError.code, cancelled)  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._ask(  # type: ignore[no-any-return]
            lambda call: call.details(), lambda exc: exc.details() or "", LOCAL_CANCEL_DETAILS
        )

    async def wait_for_connection(self) -> None:
        return None


class InterceptedUnaryUnaryCall(Intercepted, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    async def _answer(self) -> Any:
        call = await self._resolved()
        return await call

    def __await__(self) -> Any:
        return self._answer().__await__()


class InterceptedUnaryStreamCall(Intercepted, grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    def __init__(self, chain: Callable[[], Awaitable[Any]], deadline: float | None, loop: asyncio.AbstractEventLoop):
        super().__init__(chain, deadline, loop)
        self._messages: AsyncIterator[Any] | None = None

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._resolved()
        async for message in call:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._messages is None:
            self._messages = self._iterate()
        return self._messages

    async def read(self) -> Any:
        try:
            return await anext(self.__aiter__())
        except StopAsyncIteration:
            return EOF
