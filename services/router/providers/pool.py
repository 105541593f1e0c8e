"""The router's HTTP transport to providers: httpx's, with a cheaper connection pool.

httpcore's pool re-examines every connection it holds (and polls each idle socket) on
every request and every response close, quadratically in the idle ones: with 64 requests
in flight that was most of the router's time. This pool keeps a stack of idle HTTP/1.1
connections per origin and looks at one of them per request. Connections are reused
across requests (keep-alive), and the most recently used is taken first, so the rest
expire rather than being held open.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator

import httpcore
import httpx

OriginKey = tuple[bytes, bytes, int]


class _ReleasingStream:
    """A response body that gives its connection back to the pool once closed."""

    def __init__(
        self, stream: AsyncIterable[bytes], key: OriginKey, connection: httpcore.AsyncHTTPConnection, pool: StackPool
    ) -> None:
        self._stream = stream
        self._key = key
        self._connection = connection
        self._pool = pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._pool.release(self._key, self._connection)


class StackPool:
    """What httpx's transport needs of httpcore's pool: handle_async_request and aclose."""

    def __init__(self, ssl_context: ssl.SSLContext, *, max_idle_per_origin: int, keepalive_expiry: float) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle_per_origin
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[OriginKey, list[httpcore.AsyncHTTPConnection]] = {}
        self._closed = False

    async def _acquire(self, key: OriginKey, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            # has_expired polls this one socket: a connection the provider closed is not reused.
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry, http1=True, http2=False
        )

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.url.origin
        key = (origin.scheme, origin.host, origin.port)
        connection = await self._acquire(key, origin)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await connection.aclose()
            raise
        stream = response.stream
        if not isinstance(stream, AsyncIterable):
            raise TypeError("httpcore answered an async request with a sync stream")
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReleasingStream(stream, key, connection, self),
            extensions=response.extensions,
        )

    async def release(self, key: OriginKey, connection: httpcore.AsyncHTTPConnection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or not connection.is_idle() or len(idle) >= self._max_idle:
            await connection.aclose()
        else:
            idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                with contextlib.suppress(Exception):
                    await idle.pop().aclose()


class PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (its request mapping and error translation) over StackPool."""

    def __init__(self, *, max_idle_per_origin: int = 200, keepalive_expiry: float = 60.0) -> None:
        super().__init__(http1=True, http2=False)
        self._pool = StackPool(  # type: ignore[assignment]
            httpx.create_ssl_context(),
            max_idle_per_origin=max_idle_per_origin,
            keepalive_expiry=keepalive_expiry,
        )
