"""The servicer's side of one in-process call, and running a handler to its status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from services.common.inprocess.base import DEADLINE_DETAILS, DoneCallback, Metadatum, Pairs, Status, remaining

log = logging.getLogger(__name__)

PEER = "inprocess"


class Context(grpc.aio.ServicerContext):  # type: ignore[type-arg]
    """The servicer's side of one call. abort() raises AbortError, as grpc.aio's does, so the
    handler stops; the call reads the final status from here when the handler ends."""

    def __init__(
        self,
        metadata: tuple[Metadatum, ...],
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
        self._status: Status | None = None
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
        return remaining(self._deadline, self._loop)

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
        self.headers(())
        await self._on_message(message)

    # -- what the call uses
    def headers(self, pairs: Pairs) -> None:
        """Initial metadata goes out once: when sent, with the first message, or at the end."""
        if not self._headers_sent:
            self._headers_sent = True
            self._on_headers(pairs)

    def settle(self) -> Status:
        """The status of a handler that ended normally or aborted."""
        code = self._code or grpc.StatusCode.OK
        return Status(code, self._details if code != grpc.StatusCode.OK else "", self._trailing)

    def finish(self, status: Status) -> None:
        self._status = status
        self.headers(())
        for callback in self._callbacks:
            callback(self)
        self._callbacks.clear()


async def serve(work: Callable[[], Awaitable[Any]], context: Context, deadline: float | None) -> tuple[Any, Status]:
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
            return None, Status(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_DETAILS, ())
        return None, _unexpected(exc, context)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status, as over the wire
        return None, _unexpected(exc, context)
    return result, context.settle()


def _unexpected(exc: Exception, context: Context) -> Status:
    log.error("Unexpected error in in-process handler", exc_info=exc)
    return Status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}", context.trailing_metadata())
