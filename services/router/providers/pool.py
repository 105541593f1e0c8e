"""The router's HTTP transport to providers: HTTP/1.1 keep-alive connections on raw asyncio.

httpx stays the API the provider adapters use (requests, responses, content decoding,
its exceptions); this transport replaces what sits under it. httpcore, h11 and anyio
were half of the router's CPU under load (bench/README.md, bench.profile_gateway):
here a connection is an asyncio.Protocol fed straight into the httptools (llhttp)
parser uvicorn uses, and idle connections wait on a stack per origin, the most
recently used taken first so the rest expire rather than being held open.

One exchange at a time per connection (HTTP/1.1 without pipelining). A connection
goes back to the pool only when its response was read to the end and both sides
keep it alive; one the provider closed while idle is never handed out, and a request
whose reused connection closes before a single byte of answer is sent once more on a
new connection (the provider dropped an idle socket; it never saw the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import NamedTuple, cast

import httptools
import httpx

OriginKey = tuple[str, str, int]
# A streamed body stops being read past this much unconsumed data, and resumes below LOW.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class _Stale(Exception):
    """A reused connection closed before any answer: the request may be sent again."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its response as bytes arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._seen_bytes = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._seen_bytes = True
        if self._parser is None:
            # Bytes with no request outstanding: the connection can no longer be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from the provider: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self._complete:
            return
        if self._head_done and not self._framed():
            self._complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self._seen_bytes:
            self._fail(_Stale())
        else:
            self._fail(httpx.RemoteProtocolError("the provider closed the connection mid-response"))

    def pause_writing(self) -> None:  # a large request body; asyncio buffers it meanwhile
        pass

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()
        if self._status < 200:
            self._headers = []  # an interim answer (100 Continue): its final one follows
            return
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._status < 200:
            return
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
        self._wake()

    # --- the exchange ---

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._status, self._headers, self._head_done, self._complete = 0, [], False, False
        self._keep_alive, self._seen_bytes, self._error = False, False, None
        self._chunks.clear()
        self._buffered = 0
        self._transport.write(data)

    async def read_head(self, read_seconds: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        while not self._head_done:
            await self._wait(read_seconds)
        return self._status, self._headers

    async def read_chunk(self, read_seconds: float | None) -> bytes:
        """The next piece of the body, b"" at its end."""
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait(read_seconds)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < LOW_WATER and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self.closed and not self._chunks

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def _wait(self, read_seconds: float | None) -> None:
        """Until the parser has more; httpx's read timeout is per read, not for the whole answer."""
        if self._error is not None:
            raise self._error
        if self.closed and not self._complete:
            raise httpx.ReadError("the provider connection is closed")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer handle rather than asyncio.timeout: this runs once per chunk of every stream.
        timer = loop.call_later(read_seconds, self._time_out, waiter) if read_seconds is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self._error is not None:
            raise self._error

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("the provider did not answer in time"))
            self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _framed(self) -> bool:
        """Whether the body's end is marked (a length or chunks) rather than the connection's close."""
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection, which goes back to the pool once it is done."""

    def __init__(self, connection: Connection, pool: PooledTransport, key: OriginKey, timeout: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._key = key
        self._timeout = timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._connection.read_chunk(self._timeout):
                yield chunk
        except _Stale:
            raise httpx.RemoteProtocolError("the provider closed the connection mid-response") from None

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._key, self._connection)


class PooledTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over keep-alive Connections, a stack of idle ones per origin."""

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 200,
        keepalive_expiry: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_idle = max_idle_per_origin
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self._idle: dict[OriginKey, list[Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        data = _request_bytes(request, await request.aread())
        connection, status, headers = await self._exchange(key, data, timeouts.get("connect"), timeouts.get("read"))
        body = _Body(connection, self, key, timeouts.get("read"))
        return httpx.Response(status, headers=headers, stream=body, extensions={"http_version": b"HTTP/1.1"})

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, seconds: float) -> RawResponse:
        """POST and read the whole answer, without building httpx's request and response
        objects (a third of the router's CPU on a plain JSON call); the same connections,
        retry of a stale one, timeouts (each read within `seconds`) and httpx exceptions as handle_async_request."""
        target = _target(url)
        data = b"".join((target.head, *_header_lines(headers), b"Content-Length: %d\r\n\r\n" % len(body), body))
        connection, status, head = await self._exchange(target.key, data, seconds, seconds)
        chunks = []
        try:
            while chunk := await connection.read_chunk(seconds):
                chunks.append(chunk)
        except _Stale:
            raise httpx.RemoteProtocolError("the provider closed the connection mid-response") from None
        finally:
            self.release(target.key, connection)
        content = b"".join(chunks)
        if any(name.lower() == b"content-encoding" and value.lower() != b"identity" for name, value in head):
            # Compressed (rare from a JSON API): let httpx's decoders undo it.
            content = _decoded(status, head, content)
        return RawResponse(status, head, content)

    async def stream(self, url: str, headers: Mapping[str, str], body: bytes, seconds: float) -> RawStream:
        """POST and return once the answer's head is in; its body is read from the RawStream
        as it arrives (each read within `seconds`), without httpx's request, response and
        line decoder in the way of every chunk. The caller closes it."""
        target = _target(url)
        lines = _header_lines(headers)
        data = b"".join((target.head, *lines, b"Content-Length: %d\r\n\r\n" % len(body), body))
        connection, status, head = await self._exchange(target.key, data, seconds, seconds)
        try:
            return RawStream(connection, self, target.key, seconds, status=status, headers=head)
        except BaseException:
            connection.close()
            raise

    async def _exchange(
        self, key: OriginKey, data: bytes, connect_seconds: float | None, read_seconds: float | None
    ) -> tuple[Connection, int, list[tuple[bytes, bytes]]]:
        """Send one request and read its head, once more on a fresh connection if a reused one was stale."""
        for _ in range(2):
            connection, reused = await self._acquire(key, connect_seconds)
            connection.send(data)
            try:
                status, headers = await connection.read_head(read_seconds)
            except _Stale:
                connection.close()
                if reused:
                    continue  # the provider had dropped this idle connection; send on a fresh one
                raise httpx.RemoteProtocolError("the provider closed the connection without answering") from None
            except BaseException:
                connection.close()
                raise
            return connection, status, headers
        raise httpx.RemoteProtocolError("the provider closed the connection without answering")  # pragma: no cover

    async def _acquire(self, key: OriginKey, connect_seconds: float | None) -> tuple[Connection, bool]:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                return connection, True
            connection.close()
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_seconds):
                _, protocol = await loop.create_connection(
                    Connection,
                    host,
                    port,
                    ssl=self._ssl_context if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return protocol, False

    def release(self, key: OriginKey, connection: Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or not connection.reusable or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                with contextlib.suppress(Exception):
                    idle.pop().close()


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request's head and body as one write."""
    target = request.url.raw_path or b"/"
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    # The body was read whole, so it goes with its length, never in chunks.
    framing = (b"content-length", b"transfer-encoding")
    lines.extend(name + b": " + value for name, value in request.headers.raw if name.lower() not in framing)
    if body or request.method not in ("GET", "HEAD"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class RawStream:
    """A streamed answer on its connection: status, raw headers, and the body by lines
    (as httpx's aiter_lines splits them: LF, CRLF or a lone CR). The connection goes back
    to the pool when closed after the body was read to its end, and is closed otherwise."""

    def __init__(
        self,
        connection: Connection,
        pool: PooledTransport,
        key: OriginKey,
        seconds: float,
        *,
        status: int,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._connection = connection
        self._pool = pool
        self._key = key
        self._seconds = seconds
        self.status = status
        self.headers = headers
        self._closed = False
        encoding = (_header(headers, b"content-encoding") or "identity").lower()
        self._decompress: Callable[[bytes], bytes] | None = None
        if encoding in ("gzip", "x-gzip"):
            self._decompress = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress
        elif encoding == "deflate":
            self._decompress = zlib.decompressobj().decompress
        elif encoding != "identity":
            # Streams ask for identity; a provider that sends br or zstd anyway is not readable here.
            raise httpx.DecodingError(f"the provider streamed with an unsupported content-encoding: {encoding}")

    def header(self, name: bytes) -> str | None:
        return _header(self.headers, name)

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._connection.read_chunk(self._seconds):
                yield self._decompress(chunk) if self._decompress is not None else chunk
        except _Stale:
            raise httpx.RemoteProtocolError("the provider closed the connection mid-response") from None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._chunks()])

    async def aiter_lines(self) -> AsyncIterator[str]:
        pending = b""
        async for chunk in self._chunks():
            data = pending + chunk if pending else chunk
            if b"\r" not in data:
                lines = data.split(b"\n")
                pending = lines.pop()
            else:
                # A CR at the end may be the first half of a CRLF: hold it back for the next chunk.
                held = data.endswith(b"\r")
                lines = _LINE_BREAK.split(data[:-1] if held else data)
                pending = lines.pop() + (b"\r" if held else b"")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self._key, self._connection)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RawResponse(NamedTuple):
    """A whole answer to PooledTransport.post: status, raw headers, decoded body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes

    def header(self, name: bytes) -> str | None:
        return _header(self.headers, name)


class _Target(NamedTuple):
    key: OriginKey
    # The request line and Host header, ready to send.
    head: bytes


# Provider URLs are few (one per deployment and operation): parse each once.
_TARGETS: dict[str, _Target] = {}
_MAX_TARGETS = 4096


def _target(url: str) -> _Target:
    found = _TARGETS.get(url)
    if found is None:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = parsed.host.encode("idna") if not parsed.host.isascii() else parsed.host.encode()
        host_header = host if parsed.port is None else b"%s:%d" % (host, port)
        head = b"POST " + (parsed.raw_path or b"/") + b" HTTP/1.1\r\nHost: " + host_header + b"\r\n"
        found = _Target((parsed.scheme, parsed.host, port), head)
        if len(_TARGETS) < _MAX_TARGETS:
            _TARGETS[url] = found
    return found


def _header_lines(headers: Mapping[str, str]) -> list[bytes]:
    framing = ("content-length", "transfer-encoding", "host")
    return [
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()
        if name.lower() not in framing
    ]


def _decoded(status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> bytes:
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))
    return response.read()


class ProviderClient(httpx.AsyncClient):
    """httpx's client for the provider adapters, plus a plain JSON POST straight on the
    pooled transport (post_json uses it) when that is the transport it was given."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **options: object) -> None:
        super().__init__(transport=transport, **options)  # type: ignore[arg-type]
        self.pooled = transport if isinstance(transport, PooledTransport) else None
        # What httpx would add to every request (user agent, accepted encodings), computed once.
        self.default_headers = {name.lower(): value for name, value in self.headers.items()}
