"""The call objects a stub gets: a unary call runs its handler inline, in the task that
awaits it; a stream's handler runs in a task of its own and may run a few messages ahead
of its reader (STREAM_WINDOW)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc

from services.common.inprocess.base import (
    EOF,
    LOCALLY_CANCELLED,
    NOT_FOUND_DETAILS,
    DoneCallback,
    Metadatum,
    Pairs,
    Status,
    remaining,
    wake,
    wake_all,
)
from services.common.inprocess.context import Context, serve
from services.common.inprocess.handlers import Dispatcher
from services.common.inprocess.inline import Inline

# Messages a stream's handler may run ahead of its reader before it waits.
STREAM_WINDOW = 8


def _error(status: Status, initial: Pairs) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(*initial),
        grpc.aio.Metadata(*status.trailing),
        status.details,
        f"{status.code.name}:{status.details}",
    )


class Call(abc.ABC):
    """What both call kinds share: the request, the final status, callbacks, cancel
    bookkeeping. A call is in active (its channel's) while its handler runs, so that
    closing the channel can cancel it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        active: set[Call],
        method: str,
        request: Any,
        *,
        deadline: float | None,
        metadata: tuple[Metadatum, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._dispatcher = dispatcher
        self._active = active
        self._method = method
        self._request = request
        self._metadata = metadata
        self._deadline = deadline
        self._loop = loop
        self._status: Status | None = None
        self._initial: Pairs | None = None
        self._local_cancel = False
        self._callbacks: list[DoneCallback] = []
        self._done_waiters: list[asyncio.Future[None]] = []

    def _headers(self, pairs: Pairs) -> None:
        self._initial = pairs

    def _finish(self, status: Status) -> bool:
        if self._status is not None:
            return False
        self._status = status
        if self._initial is None:
            self._initial = ()
        self._active.discard(self)
        wake_all(self._done_waiters)
        for callback in self._callbacks:
            callback(self)
        self._callbacks.clear()
        return True

    def _cancel_locally(self) -> bool:
        if self._status is not None:
            return False
        self._local_cancel = True
        return self._finish(LOCALLY_CANCELLED)

    async def _ended(self) -> Status:
        """The final status, waiting for it (reading nothing)."""
        if self._status is None:
            waiter = self._loop.create_future()
            self._done_waiters.append(waiter)
            await waiter
        assert self._status is not None
        return self._status

    @abc.abstractmethod
    def cancel(self) -> bool:
        """Each kind stops its handler in its own way."""

    def cancelled(self) -> bool:
        return self._status is not None and self._status.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status is not None

    def time_remaining(self) -> float | None:
        return remaining(self._deadline, self._loop)

    def add_done_callback(self, callback: DoneCallback) -> None:
        if self._status is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*(await self._ended()).trailing)

    async def code(self) -> grpc.StatusCode:
        return (await self._ended()).code

    async def details(self) -> str:
        return (await self._ended()).details

    async def debug_error_string(self) -> str:
        status = await self._ended()
        return f"{status.code.name}:{status.details}"

    async def wait_for_connection(self) -> None:
        return None


class UnaryUnaryCall(Call, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call whose handler runs in the task that first awaits it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        active: set[Call],
        method: str,
        request: Any,
        *,
        deadline: float | None,
        metadata: tuple[Metadatum, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(dispatcher, active, method, request, deadline=deadline, metadata=metadata, loop=loop)
        self._response: Any = None
        self._run = Inline(self._invoke)

    async def _invoke(self) -> None:
        if self._status is not None:  # cancelled before it started
            return
        self._active.add(self)
        context = Context(self._metadata, self._deadline, self._loop, self._headers)
        dispatcher = self._dispatcher
        request = self._request

        async def work() -> Any:
            handler = await dispatcher.find(self._method, self._metadata)
            if handler is None or handler.unary_unary is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_FOUND_DETAILS)
            behaviour: Any = handler.unary_unary
            answer = behaviour(request, context)
            return await answer if isinstance(answer, Awaitable) else answer

        try:
            response, status = await serve(work, context, self._deadline)
        except asyncio.CancelledError:
            self._cancel_locally()
            context.finish(LOCALLY_CANCELLED)
            raise
        self._response = response
        context.finish(status)
        self._finish(status)

    async def _wait_run(self) -> None:
        try:
            await self._run.wait()
        except asyncio.CancelledError:
            self.cancel()  # as grpc.aio: a caller that stops waiting cancels the RPC
            raise

    async def _ended(self) -> Status:
        # Asking for the status of a call nobody awaited yet runs it, as its RPC has started.
        if self._status is None:
            try:
                await self._wait_run()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this task is being cancelled, not only the call
        return await super()._ended()

    async def _answer(self) -> Any:
        await self._wait_run()
        status = self._status
        assert status is not None
        if status.code == grpc.StatusCode.OK:
            return self._response
        if self._local_cancel:
            raise asyncio.CancelledError()
        raise _error(status, self._initial or ())

    def __await__(self) -> Any:
        return self._answer().__await__()

    def cancel(self) -> bool:
        if not self._cancel_locally():
            return False
        self._run.cancel()
        return True

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._ended()
        return grpc.aio.Metadata(*(self._initial or ()))


class UnaryStreamCall(Call, grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    """A server-streaming call: the handler runs in its own task from the start (as the RPC
    starts when the stub is called) and hands its messages over through a small buffer."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        active: set[Call],
        method: str,
        request: Any,
        *,
        deadline: float | None,
        metadata: tuple[Metadatum, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(dispatcher, active, method, request, deadline=deadline, metadata=metadata, loop=loop)
        self._buffer: deque[Any] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._headers_waiters: list[asyncio.Future[None]] = []
        self._messages: AsyncIterator[Any] | None = None
        active.add(self)
        self._task = loop.create_task(self._produce())

    def _headers(self, pairs: Pairs) -> None:
        if self._initial is None:
            self._initial = pairs
        wake_all(self._headers_waiters)

    async def _push(self, message: Any) -> None:
        self._buffer.append(message)
        wake(self._reader)
        while len(self._buffer) >= STREAM_WINDOW and self._status is None:
            self._writer = self._loop.create_future()
            await self._writer

    async def _produce(self) -> None:
        context = Context(self._metadata, self._deadline, self._loop, self._headers, self._push)
        dispatcher = self._dispatcher

        async def work() -> None:
            handler = await dispatcher.find(self._method, self._metadata)
            if handler is None or handler.unary_stream is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_FOUND_DETAILS)
            behaviour: Any = handler.unary_stream
            messages = behaviour(self._request, context)
            if isinstance(messages, Awaitable):  # a handler that writes through context.write()
                await messages
                return
            # Closed on the way out, so a cancelled stream's finally blocks run now.
            async with contextlib.aclosing(messages):
                async for message in messages:
                    await context.write(message)

        try:
            _, status = await serve(work, context, self._deadline)
        except asyncio.CancelledError:
            # cancel() set the client's status; the task itself ends quietly.
            context.finish(LOCALLY_CANCELLED)
            return
        context.finish(status)
        self._finish(status)

    def _finish(self, status: Status) -> bool:
        if not super()._finish(status):
            return False
        wake(self._reader)
        wake(self._writer)
        wake_all(self._headers_waiters)
        return True

    def cancel(self) -> bool:
        if not self._cancel_locally():
            return False
        self._task.cancel()
        return True

    async def read(self) -> Any:
        while True:
            if self._local_cancel:
                raise asyncio.CancelledError()
            if self._buffer:
                message = self._buffer.popleft()
                wake(self._writer)
                return message
            status = self._status
            if status is not None:
                if status.code == grpc.StatusCode.OK:
                    return EOF
                raise _error(status, self._initial or ())
            self._reader = self._loop.create_future()
            try:
                await self._reader
            except asyncio.CancelledError:
                self.cancel()
                raise

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not EOF:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._messages is None:
            self._messages = self._iterate()
        return self._messages

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if self._initial is None:
            waiter = self._loop.create_future()
            self._headers_waiters.append(waiter)
            await waiter
        return grpc.aio.Metadata(*(self._initial or ()))
