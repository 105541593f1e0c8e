"""An in-process gRPC channel: the generated async stubs call servicers of this process
directly, with the proto objects (no serialization, no socket), while callers and
servicers see what they see over a connection: metadata and trailers, status codes and
rich errors (grpc.aio.AioRpcError), deadlines and cancellation. grpc-java's in-process
transport is the model; only unary-unary and unary-stream methods are carried.

Messages are passed by reference: a servicer must treat its request as read-only (the
router's does) and a caller must not change a request while its call runs.

Cost, on the co-located mode's hot path: a unary call runs its handler inline, in the task
that awaits it (no task or queue per call), and the client interceptors run there too. A
stream's handler runs in a task of its own, as on a server, so a deadline or cancel stops it
wherever it is, and it can run a few messages ahead of a slow reader (a flow-control window).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn, TypeAlias, cast

import grpc

from services.common.grpc_server import ErrorMappingInterceptor, Registration
from services.common.metrics import MetricsInterceptor

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Pairs: TypeAlias = tuple[tuple[str, str | bytes], ...]
DoneCallback: TypeAlias = Callable[[Any], None]
# What read() returns at a stream's end (missing from grpc's type stubs).
EOF: Any = cast(Any, grpc.aio).EOF

PEER = "inprocess"
# Messages a stream's handler may run ahead of its reader before it waits.
STREAM_WINDOW = 8
# What grpc.aio says in these cases, so logs and error bodies read the same.
LOCAL_CANCEL_DETAILS = "Locally cancelled by application!"
DEADLINE_DETAILS = "Deadline Exceeded"
NOT_FOUND_DETAILS = "Method not found!"


class _Metadatum(NamedTuple):
    """One invocation metadata entry, shaped as grpc.aio's server hands them out."""

    key: str
    value: str | bytes


class _HandlerCallDetails(NamedTuple):
    """What server interceptors and generic handlers are given (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[_Metadatum, ...]


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing: Pairs


_OK = _Status(grpc.StatusCode.OK, "", ())


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


class _Dispatcher:
    """Finds a method's handler through the server interceptors, as grpc.aio's server does
    for every call (an interceptor may look at the call's metadata)."""

    def __init__(self, registrations: Sequence[Registration], interceptors: Sequence[grpc.aio.ServerInterceptor]):  # type: ignore[type-arg]
        collector = _Collector()
        for registration in registrations:
            registration.add(registration.servicer, collector)  # type: ignore[arg-type]
        self._methods = collector.methods
        self._generic = collector.generic
        self._interceptors = tuple(interceptors)

    def _query(self, details: _HandlerCallDetails) -> Handler | None:
        found = self._methods.get(details.method)
        if found is not None:
            return found
        for generic in self._generic:
            found = generic.service(details)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    async def _intercept(self, index: int, details: _HandlerCallDetails) -> Handler | None:
        if index == len(self._interceptors):
            return self._query(details)
        continuation = functools.partial(self._intercept, index + 1)
        return await self._interceptors[index].intercept_service(continuation, details)  # type: ignore[arg-type]

    async def find(self, method: str, metadata: tuple[_Metadatum, ...]) -> Handler | None:
        details = _HandlerCallDetails(method, metadata)
        if not self._interceptors:
            return self._query(details)
        return await self._intercept(0, details)


class _Context(grpc.aio.ServicerContext):  # type: ignore[type-arg]
    """The servicer's side of one call. abort() raises AbortError, as grpc.aio's does, so the
    handler stops; the call reads the final status from here when the handler ends."""

    def __init__(
        self,
        metadata: tuple[_Metadatum, ...],
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
        on_headers: Callable[[Pairs], None],
        on_message: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._loop = loop
        self._on_headers = on_headers
        self._on_message = on_message
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Pairs = ()
        self._headers_sent = False
        self._aborted = False
        self._status: _Status | None = None
        self._callbacks: list[DoneCallback] = []

    # -- what servicers and interceptors call
    def invocation_metadata(self) -> Any:
        return self._metadata

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._headers_sent:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self.headers(tuple(initial_metadata))

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if self._aborted:
            raise grpc.aio.UsageError("Abort already called!")
        if code == grpc.StatusCode.OK:
            log.error("abort() called with StatusCode.OK; returning UNKNOWN")
            code = grpc.StatusCode.UNKNOWN
        self._aborted = True
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> Any:
        return None if self._deadline is None else max(self._deadline - self._loop.time(), 0.0)

    def cancelled(self) -> bool:
        return self._status is not None and self._status.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status is not None

    def add_done_callback(self, callback: Any) -> None:
        if self._status is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def peer(self) -> str:
        return PEER

    def peer_identities(self) -> Any:
        return None

    def peer_identity_key(self) -> Any:
        return None

    def auth_context(self) -> Any:
        return {}

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # nothing is compressed in process

    def disable_next_message_compression(self) -> None:
        pass

    async def read(self) -> Any:
        raise grpc.aio.UsageError("read() is for client-streaming methods, which are not carried in process")

    async def write(self, message: Any) -> None:
        if self._on_message is None:
            raise grpc.aio.UsageError("write() is for server-streaming methods")
        await self._on_message(message)

    # -- what the call uses
    def headers(self, pairs: Pairs) -> None:
        """Initial metadata goes out once: when sent, with the first message, or at the end."""
        if not self._headers_sent:
            self._headers_sent = True
            self._on_headers(pairs)

    def settle(self) -> _Status:
        """The status of a handler that ended normally or aborted."""
        code = self._code or grpc.StatusCode.OK
        return _Status(code, self._details if code != grpc.StatusCode.OK else "", self._trailing)

    def finish(self, status: _Status) -> None:
        self._status = status
        self.headers(())
        for callback in self._callbacks:
            callback(self)
        self._callbacks.clear()


async def _serve(work: Callable[[], Awaitable[Any]], context: _Context, deadline: float | None) -> tuple[Any, _Status]:
    """Run a handler's work to its status, as a server does: an abort or set_code gives
    that status, an unmapped exception UNKNOWN, a passed deadline DEADLINE_EXCEEDED (the
    handler sees CancelledError). Cancellation propagates."""
    scope = asyncio.timeout_at(deadline) if deadline is not None else None
    try:
        if scope is None:
            result = await work()
        else:
            async with scope:
                result = await work()
    except grpc.aio.AbortError:
        return None, context.settle()
    except TimeoutError as exc:
        if scope is not None and scope.expired():
            return None, _Status(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_DETAILS, ())
        return None, _unexpected(exc, context)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status, as over the wire
        return None, _unexpected(exc, context)
    return result, context.settle()


def _unexpected(exc: Exception, context: _Context) -> _Status:
    log.error("Unexpected error in in-process handler", exc_info=exc)
    return _Status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}", context.trailing_metadata())


def _error(status: _Status, initial: Pairs) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(*initial),
        grpc.aio.Metadata(*status.trailing),
        status.details,
        f"{status.code.name}:{status.details}",
    )


class _Inline:
    """Work run once, inline in the first task that awaits it; later awaiters wait for its
    end. cancel() from any task stops the work where it is: the running task sees
    CancelledError, as with grpc.aio's call.cancel(), without being left cancelling."""

    __slots__ = ("_cancelling", "_task", "_waiters", "_work", "finished")

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self._work = work
        self._task: asyncio.Task[Any] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._cancelling = False
        self.finished = False

    @property
    def started(self) -> bool:
        return self._task is not None

    async def wait(self) -> None:
        if self.finished:
            return
        if self._task is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
            return
        task = self._task = asyncio.current_task()
        try:
            await self._work()
        except asyncio.CancelledError:
            if self._cancelling and task is not None:
                self._cancelling = False
                task.uncancel()
            raise
        finally:
            self.finished = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def cancel(self) -> None:
        if self._task is not None and not self.finished and not self._cancelling:
            self._cancelling = True
            self._task.cancel()


class _Call:
    """What both call kinds share: the final status, callbacks, cancel bookkeeping."""

    def __init__(self, channel: InProcessChannel, deadline: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._deadline = deadline
        self._loop = loop
        self._status: _Status | None = None
        self._initial: Pairs | None = None
        self._local_cancel = False
        self._callbacks: list[DoneCallback] = []
        self._done_waiters: list[asyncio.Future[None]] = []

    def _headers(self, pairs: Pairs) -> None:
        self._initial = pairs

    def _finish(self, status: _Status) -> bool:
        if self._status is not None:
            return False
        self._status = status
        if self._initial is None:
            self._initial = ()
        self._channel._active.discard(self)
        for waiter in self._done_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._done_waiters.clear()
        for callback in self._callbacks:
            callback(self)
        self._callbacks.clear()
        return True

    def _cancel_locally(self) -> bool:
        if self._status is not None:
            return False
        self._local_cancel = True
        return self._finish(_Status(grpc.StatusCode.CANCELLED, LOCAL_CANCEL_DETAILS, ()))

    async def _ended(self) -> _Status:
        """The final status, waiting for it (reading nothing)."""
        if self._status is None:
            await self._run_to_end()
        assert self._status is not None
        return self._status

    async def _run_to_end(self) -> None:
        waiter = self._loop.create_future()
        self._done_waiters.append(waiter)
        await waiter

    def cancelled(self) -> bool:
        return self._status is not None and self._status.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status is not None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - self._loop.time(), 0.0)

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


class _UnaryUnaryCall(_Call, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call whose handler runs in the task that first awaits it."""

    def __init__(
        self,
        channel: InProcessChannel,
        method: str,
        request: Any,
        *,
        deadline: float | None,
        metadata: tuple[_Metadatum, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(channel, deadline, loop)
        self._method = method
        self._request = request
        self._metadata = metadata
        self._response: Any = None
        self._run = _Inline(self._invoke)

    async def _invoke(self) -> None:
        if self._status is not None:  # cancelled before it started
            return
        self._channel._active.add(self)
        context = _Context(self._metadata, self._deadline, self._loop, self._headers)
        dispatcher = self._channel._dispatcher
        request = self._request

        async def work() -> Any:
            handler = await dispatcher.find(self._method, self._metadata)
            if handler is None or handler.unary_unary is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_FOUND_DETAILS)
            behaviour: Any = handler.unary_unary
            answer = behaviour(request, context)
            return await answer if isinstance(answer, Awaitable) else answer

        try:
            response, status = await _serve(work, context, self._deadline)
        except asyncio.CancelledError:
            self._cancel_locally()
            context.finish(_Status(grpc.StatusCode.CANCELLED, LOCAL_CANCEL_DETAILS, ()))
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

    async def _ended(self) -> _Status:
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


class _UnaryStreamCall(_Call, grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    """A server-streaming call: the handler runs in its own task from the start (as the RPC
    starts when the stub is called) and hands its messages over through a small buffer."""

    def __init__(
        self,
        channel: InProcessChannel,
        method: str,
        request: Any,
        *,
        deadline: float | None,
        metadata: tuple[_Metadatum, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(channel, deadline, loop)
        self._method = method
        self._request = request
        self._metadata = metadata
        self._buffer: deque[Any] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._headers_waiters: list[asyncio.Future[None]] = []
        self._messages: AsyncIterator[Any] | None = None
        channel._active.add(self)
        self._task = loop.create_task(self._produce())

    def _headers(self, pairs: Pairs) -> None:
        if self._initial is None:
            self._initial = pairs
        self._wake_all(self._headers_waiters)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_all(self, waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            self._wake(waiter)
        waiters.clear()

    async def _push(self, message: Any, context: _Context) -> None:
        context.headers(())
        self._buffer.append(message)
        self._wake(self._reader)
        while len(self._buffer) >= STREAM_WINDOW and self._status is None:
            self._writer = self._loop.create_future()
            await self._writer

    async def _produce(self) -> None:
        context = _Context(self._metadata, self._deadline, self._loop, self._headers)
        context._on_message = lambda message: self._push(message, context)
        dispatcher = self._channel._dispatcher

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
                    await self._push(message, context)

        try:
            _, status = await _serve(work, context, self._deadline)
        except asyncio.CancelledError:
            # cancel() set the client's status; the task itself ends quietly.
            context.finish(_Status(grpc.StatusCode.CANCELLED, LOCAL_CANCEL_DETAILS, ()))
            return
        context.finish(status)
        self._finish(status)

    def _finish(self, status: _Status) -> bool:
        if not super()._finish(status):
            return False
        self._wake(self._reader)
        self._wake(self._writer)
        self._wake_all(self._headers_waiters)
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
                self._wake(self._writer)
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


class _Answered(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
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


class _Intercepted:
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
        self._run = _Inline(self._resolve)

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
        return None if self._deadline is None else max(self._deadline - self._loop.time(), 0.0)

    async def initial_metadata(self) -> Any:
        try:
            call = await self._resolved()
        except grpc.aio.AioRpcError as exc:
            return exc.initial_metadata()
        except asyncio.CancelledError:
            return None
        return await call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        try:
            call = await self._resolved()
        except grpc.aio.AioRpcError as exc:
            return exc.trailing_metadata()
        except asyncio.CancelledError:
            return None
        return await call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        try:
            call = await self._resolved()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED
        return await call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        try:
            call = await self._resolved()
        except grpc.aio.AioRpcError as exc:
            return exc.details() or ""
        except asyncio.CancelledError:
            return LOCAL_CANCEL_DETAILS
        return await call.details()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        return None


class _InterceptedUnaryUnaryCall(_Intercepted, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    async def _answer(self) -> Any:
        call = await self._resolved()
        return await call

    def __await__(self) -> Any:
        return self._answer().__await__()


class _ResponseIterator(grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
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


class _InterceptedUnaryStreamCall(_Intercepted, grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
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


def _as_metadata(metadata: Any) -> grpc.aio.Metadata:
    if isinstance(metadata, grpc.aio.Metadata):
        return metadata
    return grpc.aio.Metadata(*(metadata or ()))


def _invocation(metadata: grpc.aio.Metadata | None) -> tuple[_Metadatum, ...]:
    return tuple(_Metadatum(key, value) for key, value in metadata or ())


class _UnaryUnaryMultiCallable:
    def __init__(self, channel: InProcessChannel, method: str, interceptors: Sequence[Any]) -> None:
        self._channel = channel
        self._method = method
        # grpc.aio hands interceptors the method as bytes.
        self._wire_method: Any = method.encode()
        self._interceptors = tuple(interceptors)

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryUnaryCall:  # type: ignore[type-arg]
        channel = self._channel
        loop = channel._open()
        if not self._interceptors:
            deadline = None if timeout is None else loop.time() + timeout
            return _UnaryUnaryCall(
                channel, self._method, request, deadline=deadline, metadata=_invocation(metadata), loop=loop
            )
        interceptors = self._interceptors

        async def run(index: int, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            if index == len(interceptors):
                deadline = None if details.timeout is None else loop.time() + details.timeout
                return _UnaryUnaryCall(
                    channel,
                    self._method if details.method is self._wire_method else _method_name(details.method),
                    request,
                    deadline=deadline,
                    metadata=_invocation(details.metadata),
                    loop=loop,
                )
            answer = await interceptors[index].intercept_unary_unary(
                functools.partial(run, index + 1), details, request
            )
            return answer if isinstance(answer, grpc.aio.UnaryUnaryCall) else _Answered(answer)

        details = grpc.aio.ClientCallDetails(
            self._wire_method,
            timeout,
            _as_metadata(metadata),
            credentials,
            wait_for_ready,
        )
        deadline = None if timeout is None else loop.time() + timeout
        return _InterceptedUnaryUnaryCall(lambda: run(0, details, request), deadline, loop)


class _UnaryStreamMultiCallable:
    def __init__(self, channel: InProcessChannel, method: str, interceptors: Sequence[Any]) -> None:
        self._channel = channel
        self._method = method
        # grpc.aio hands interceptors the method as bytes.
        self._wire_method: Any = method.encode()
        self._interceptors = tuple(interceptors)

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
        channel = self._channel
        loop = channel._open()
        if not self._interceptors:
            deadline = None if timeout is None else loop.time() + timeout
            return _UnaryStreamCall(
                channel, self._method, request, deadline=deadline, metadata=_invocation(metadata), loop=loop
            )
        interceptors = self._interceptors
        last: list[Any] = [None]

        async def run(index: int, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            if index == len(interceptors):
                deadline = None if details.timeout is None else loop.time() + details.timeout
                last[0] = _UnaryStreamCall(
                    channel,
                    self._method if details.method is self._wire_method else _method_name(details.method),
                    request,
                    deadline=deadline,
                    metadata=_invocation(details.metadata),
                    loop=loop,
                )
                return last[0]
            answer = await interceptors[index].intercept_unary_stream(
                functools.partial(run, index + 1), details, request
            )
            # An interceptor may answer with an iterator of its own: the call beneath stays the call.
            last[0] = answer if isinstance(answer, grpc.aio.UnaryStreamCall) else _ResponseIterator(last[0], answer)
            return last[0]

        details = grpc.aio.ClientCallDetails(
            self._wire_method,
            timeout,
            _as_metadata(metadata),
            credentials,
            wait_for_ready,
        )
        deadline = None if timeout is None else loop.time() + timeout
        return _InterceptedUnaryStreamCall(lambda: run(0, details, request), deadline, loop)


def _method_name(method: str | bytes) -> str:
    """grpc.aio hands interceptors the method as bytes; handlers are found by str."""
    return method.decode() if isinstance(method, bytes) else method


def default_server_interceptors() -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The chain create_server installs: metrics first, so it sees the mapped status."""
    return [MetricsInterceptor(), ErrorMappingInterceptor()]


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
        self._dispatcher = _Dispatcher(registrations, chain)
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
        self._active: set[_Call] = set()
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
            await asyncio.wait([asyncio.ensure_future(call._ended()) for call in calls], timeout=grace)
        for call in calls:
            call_cancel: Callable[[], bool] = call.cancel  # type: ignore[attr-defined]
            call_cancel()

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)
