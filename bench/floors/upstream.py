"""The floors' upstream client: HTTP/1.1 keep-alive POSTs on raw asyncio and httptools.

One request at a time per connection; idle connections wait on a stack and a new one is
opened whenever none is idle, so the pool grows to the concurrency it sees. A connection
whose exchange did not finish cleanly (an error, a cancelled caller) is closed, never
reused: its next bytes could belong to the old answer.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The upstream closed the connection or sent something that is not HTTP."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport, self.reusable = None, False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(UpstreamError(f"upstream closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self.close()  # bytes nobody asked for: the connection can no longer be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._answer is not None and not self._answer.done():
                self._answer.set_exception(UpstreamError(f"invalid HTTP from upstream: {exc}"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None and self._answer is not None
        self.reusable = self._parser.should_keep_alive()
        if not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), b"".join(self._body)))
        self._parser = None

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._body, self.reusable = [], False
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._answer

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """POSTs JSON bodies to one URL over a pool of keep-alive connections."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        # Everything but the length and the body is the same for every request: built once.
        self._head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._idle: list[_Connection] = []

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of the upstream's answer to one POST."""
        connection = await self._connection()
        try:
            status, payload = await connection.request(self._head + b"%d\r\n\r\n" % len(body) + body)
        except BaseException:
            connection.close()
            raise
        if connection.reusable and connection.transport is not None:
            self._idle.append(connection)
        return status, payload

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Connection, self._host, self._port)
        return protocol

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
