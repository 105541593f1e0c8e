"""The router's provider transport (services/router/providers/pool.py) against a real HTTP
server on a loopback socket: a raw asyncio server whose answers each test scripts byte by byte,
so keep-alive, framing, early closes and timeouts are exactly what the test says."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Awaitable, Callable

import httpx
import pytest
import uvloop

from services.router.providers.pool import HIGH_WATER, PooledTransport, ProviderClient

Case = Callable[[httpx.AsyncClient], Awaitable[None]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """Counts connections; `handler(reader, writer, n)` answers the n-th request of a connection
    and says whether to keep reading requests on it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await asyncio.sleep(0.01)  # the handlers see their sockets close and return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/x?q=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
                self.requests.append(head + await reader.readexactly(length))
                n += 1
                if not await self.handler(reader, writer, n):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + b"".join(extra) + b"\r\n" + body


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    writer.write(ok(b'{"n": %d}' % n))
    await writer.drain()
    return True


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Case], None]:
    """Runs a case on each loop: the router runs on uvloop, whose transports differ from asyncio's."""

    def runner(case: Case) -> None:
        async def with_client() -> None:
            timeout = httpx.Timeout(2.0, connect=1.0)
            async with httpx.AsyncClient(transport=PooledTransport(), timeout=timeout) as client:
                await case(client)

        if request.param == "uvloop":
            uvloop.run(with_client())
        else:
            asyncio.run(with_client())

    return runner


async def _connections_are_kept_alive_and_requests_are_well_formed(client: httpx.AsyncClient) -> None:
    async with Server(keep_alive) as server:
        for n in (1, 2, 3):
            answer = await client.post(server.url, content=b'{"a": 1}', headers={"Authorization": "Bearer k"})
            assert answer.status_code == 200 and answer.json() == {"n": n}
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
        assert b"\r\nContent-Length: 8\r\n" in first and b"authorization: bearer k" in first.lower()
        assert first.endswith(b'\r\n\r\n{"a": 1}')


async def _an_idle_connection_the_provider_dropped_is_replaced(client: httpx.AsyncClient) -> None:
    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # closes without answering, as a provider timing out an idle socket does
        writer.write(ok(b"{}"))
        await writer.drain()
        return True

    async with Server(once_per_connection) as server:
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        # The close is only seen once the request is on the wire: sent again on a new connection.
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        assert server.connections == 2


async def _chunks_are_handed_over_as_they_arrive(client: httpx.AsyncClient) -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with Server(chunked) as server:
        async with client.stream("POST", server.url, content=b"{}") as answer:
            parts = answer.aiter_raw()
            assert await parts.__anext__() == b"data: 1"  # before the server has sent the rest
            release.set()
            assert [part async for part in parts] == [b"data: 2"]
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        assert server.connections == 1  # read to the end: reused


async def _a_body_delimited_by_the_close_and_a_gzip_one(client: httpx.AsyncClient) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: gzip\r\n\r\n")
        writer.write(gzip.compress(b'{"whole": true}'))
        await writer.drain()
        return False

    async with Server(close_delimited) as server:
        answer = await client.post(server.url, content=b"{}")
        assert answer.json() == {"whole": True}
        await client.post(server.url, content=b"{}")
        assert server.connections == 2  # Connection: close is honoured


async def _a_large_body_survives_flow_control(client: httpx.AsyncClient) -> None:
    body = bytes(range(256)) * (4 * HIGH_WATER // 256)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(ok(body))
        await writer.drain()
        return True

    async with Server(large) as server:
        async with client.stream("POST", server.url, content=b"{}") as answer:
            received = b""
            async for part in answer.aiter_raw():
                received += part
                await asyncio.sleep(0)  # a slow reader: the transport pauses and resumes reading
        assert received == body


async def _timeouts_and_broken_answers_are_httpx_errors(client: httpx.AsyncClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        return False

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        return False

    async with Server(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(server.url, content=b"{}", timeout=0.2)
    async with Server(cut) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
    async with Server(garbage) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
    async with Server(silent) as server:
        port = server.port
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/", content=b"{}")


async def _a_response_closed_early_is_not_reused(client: httpx.AsyncClient) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        return False

    async with Server(endless) as server:
        async with client.stream("POST", server.url, content=b"{}") as answer:
            async for _ in answer.aiter_raw():
                break  # the client went away mid-stream
        async with client.stream("POST", server.url, content=b"{}") as answer:
            async for _ in answer.aiter_raw():
                break
        assert server.connections == 2


def test_connections_are_kept_alive_and_requests_are_well_formed(run: Callable[[Case], None]) -> None:
    run(_connections_are_kept_alive_and_requests_are_well_formed)


def test_an_idle_connection_the_provider_dropped_is_replaced(run: Callable[[Case], None]) -> None:
    run(_an_idle_connection_the_provider_dropped_is_replaced)


def test_chunks_are_handed_over_as_they_arrive(run: Callable[[Case], None]) -> None:
    run(_chunks_are_handed_over_as_they_arrive)


def test_a_body_delimited_by_the_close_and_a_gzip_one(run: Callable[[Case], None]) -> None:
    run(_a_body_delimited_by_the_close_and_a_gzip_one)


def test_a_large_body_survives_flow_control(run: Callable[[Case], None]) -> None:
    run(_a_large_body_survives_flow_control)


def test_timeouts_and_broken_answers_are_httpx_errors(run: Callable[[Case], None]) -> None:
    run(_timeouts_and_broken_answers_are_httpx_errors)


def test_a_response_closed_early_is_not_reused(run: Callable[[Case], None]) -> None:
    run(_a_response_closed_early_is_not_reused)


async def _the_raw_post_keeps_alive_retries_stale_decodes_and_fails_as_httpx(client: httpx.AsyncClient) -> None:
    """PooledTransport.post, the plain JSON path post_json takes: same connections and errors."""
    pooled = ProviderClient(transport=PooledTransport())
    assert pooled.pooled is not None
    headers = {**pooled.default_headers, "authorization": "Bearer k"}

    async def second_drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 3:
            return False  # an idle connection the provider dropped
        writer.write(ok(b'{"n": %d}' % n, b"Retry-After: 7\r\n"))
        await writer.drain()
        return True

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        body = gzip.compress(b'{"whole": true}')
        writer.write(ok(body, b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        return True

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    try:
        async with Server(second_drops) as server:
            for n in (1, 2):
                answer = await pooled.pooled.post(server.url, headers, b'{"a": 1}', 2.0)
                assert (answer.status, answer.content) == (200, b'{"n": %d}' % n)
                assert answer.header(b"retry-after") == "7" and answer.header(b"x-absent") is None
            assert server.connections == 1
            first = server.requests[0]
            assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
            assert b"\r\nContent-Length: 8\r\n" in first and b"authorization: Bearer k" in first
            assert b"user-agent: python-httpx" in first and first.endswith(b'\r\n\r\n{"a": 1}')
            # The third request meets the dropped connection: sent again on a fresh one.
            assert (await pooled.pooled.post(server.url, headers, b"{}", 2.0)).status == 200
            assert server.connections == 2
        async with Server(gzipped) as server:
            assert (await pooled.pooled.post(server.url, headers, b"{}", 2.0)).content == b'{"whole": true}'
        async with Server(silent) as server:
            with pytest.raises(httpx.ReadTimeout):
                await pooled.pooled.post(server.url, headers, b"{}", 0.2)
            port = server.port
        with pytest.raises(httpx.ConnectError):
            await pooled.pooled.post(f"http://127.0.0.1:{port}/", headers, b"{}", 1.0)
    finally:
        await pooled.aclose()


def test_the_raw_post_keeps_alive_retries_stale_decodes_and_fails_as_httpx(run: Callable[[Case], None]) -> None:
    run(_the_raw_post_keeps_alive_retries_stale_decodes_and_fails_as_httpx)


async def _the_raw_stream_splits_lines_as_they_arrive_and_reuses_only_a_finished_one(
    client: httpx.AsyncClient,
) -> None:
    """PooledTransport.stream, the streaming path open_stream takes: lines (LF, CRLF, a lone CR,
    a CRLF cut between two chunks, a multi-byte character cut likewise) handed over as they
    arrive, gzip undone, timeouts and cuts as httpx's errors, and the connection reused only
    when its answer was read to the end."""
    pooled = ProviderClient(transport=PooledTransport())
    assert pooled.pooled is not None
    headers = {**pooled.default_headers, "accept-encoding": "identity"}
    release = asyncio.Event()
    pieces = [b"data: 1\n\n", b"data: 2\r", b"\n\r\nevent: x\rdata: \xc3", b"\xa9t\xc3\xa9\r\n", b"tail"]

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(chunk(pieces[0]))
        await writer.drain()
        await release.wait()
        writer.write(b"".join(chunk(p) for p in pieces[1:]) + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        body = gzip.compress(b"data: a\n\ndata: b\n\n")
        writer.write(ok(body, b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        return True

    async def refused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 6\r\n\r\n{"e":1')
        await writer.drain()
        return True

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n"))
        await writer.drain()
        await asyncio.sleep(5)
        return False

    try:
        async with Server(sse) as server:
            stream = await pooled.pooled.stream(server.url, headers, b"{}", 2.0)
            assert stream.status == 200 and stream.header(b"content-type") == "text/event-stream"
            lines = stream.aiter_lines()
            assert [await anext(lines), await anext(lines)] == ["data: 1", ""]  # before the rest is sent
            release.set()
            assert [line async for line in lines] == ["data: 2", "", "event: x", "data: été", "tail"]
            await stream.aclose()
            assert server.requests[0].startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
            release.clear()
            # Read to its end: the connection is reused. Left mid-answer: it is not.
            stream = await pooled.pooled.stream(server.url, headers, b"{}", 2.0)
            assert await anext(stream.aiter_lines()) == "data: 1"
            await stream.aclose()
            assert server.connections == 1
            release.set()
            await (await pooled.pooled.stream(server.url, headers, b"{}", 2.0)).aclose()
            assert server.connections == 2
        async with Server(gzipped) as server:
            stream = await pooled.pooled.stream(server.url, headers, b"{}", 2.0)
            assert [line async for line in stream.aiter_lines()] == ["data: a", "", "data: b", ""]
            await stream.aclose()
        async with Server(refused) as server:
            stream = await pooled.pooled.stream(server.url, headers, b"{}", 2.0)
            assert (stream.status, stream.header(b"retry-after"), await stream.aread()) == (429, "3", b'{"e":1')
            await stream.aclose()
        async with Server(stalls) as server:
            stream = await pooled.pooled.stream(server.url, headers, b"{}", 0.2)
            lines = stream.aiter_lines()
            assert await anext(lines) == "data: 1"
            with pytest.raises(httpx.ReadTimeout):
                await anext(lines)
            await stream.aclose()
    finally:
        await pooled.aclose()


def test_the_raw_stream_splits_lines_as_they_arrive_and_reuses_only_a_finished_one(
    run: Callable[[Case], None],
) -> None:
    run(_the_raw_stream_splits_lines_as_they_arrive_and_reuses_only_a_finished_one)
