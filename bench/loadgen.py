"""An HTTP/1.1 load generator on raw asyncio, far cheaper than what it measures.

One `asyncio.Protocol` per keep-alive connection (uvloop when installed); the
request bytes are built once. It reads Content-Length, chunked and
until-close bodies, and for a streamed answer notes when the first SSE chunk
carrying non-empty `content` arrives (time to first token).

- closed loop (`rate == 0`): `connections` workers, one request in flight
  each, back to back, for `warmup + seconds`; only requests sent after the
  warm-up count, and latency runs from the send.
- open loop (`rate > 0`): request i is due at `t0 + i / rate`; it takes an idle
  connection or opens one (up to `connections`, then it waits for one), and
  its latency runs from the scheduled time, so queueing counts (no coordinated
  omission).

Latency percentiles cover the 200 answers; everything else is counted under
its status or, with no status, the error's kind (`timeout`, `connection`).

Run: `python -m bench.loadgen --spec '<LoadSpec as JSON>'`; prints the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from bench.harness import cpu_seconds, percentile

_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')


@dataclass(frozen=True)
class LoadSpec:
    """One load run against one URL."""

    url: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    connections: int = 1
    rate: float = 0.0
    seconds: float = 5.0
    warmup: float = 1.0
    timeout: float = 30.0

    def request_bytes(self) -> tuple[str, int, bytes]:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        body = self.body.encode()
        lines = [
            f"POST {parts.path or '/'} HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """A keep-alive client connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, int | None, bytes]] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._in_body = False
        self._length = -1  # bytes of body left; -1 chunked, -2 until close
        self._chunk_left = 0
        self._crlf_due = False
        self._trailer = False
        self._close = False
        self._ttft_ns: int | None = None
        self._scan = b""
        self._sample = b""  # the start of a non-200 answer's body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.alive = cast(asyncio.Transport, transport), True

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self._waiter is not None and not self._waiter.done():
            if self._in_body and self._length == -2:
                self._done()
            else:
                self._waiter.set_exception(ConnectionError(str(exc or "connection closed")))

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, int | None, bytes]]:
        """Write one request; the future gives (status, time of first content in ns or None, and
        for a status other than 200 the start of the body)."""
        assert self.transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    def _content(self, data: bytes) -> None:
        if self._status != 200 and len(self._sample) < 300:
            self._sample += data[: 300 - len(self._sample)]
        if self._ttft_ns is None:
            self._scan = self._scan[-32:] + data
            if _CONTENT.search(self._scan):
                self._ttft_ns = time.perf_counter_ns()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._in_body:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower().split(b"\r\n")
            del self._buffer[: end + 4]
            self._status = int(head[0].split(b" ")[1])
            self._in_body = True
            self._length = -2
            for line in head[1:]:
                name, _, value = line.partition(b":")
                value = value.strip()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value:
                    self._length = -1
                elif name == b"connection" and value == b"close":
                    self._close = True
        if self._length >= 0:
            take = min(self._length, len(self._buffer))
            self._content(bytes(self._buffer[:take]))
            del self._buffer[:take]
            self._length -= take
            if self._length == 0:
                self._done()
        elif self._length == -1:
            self._chunked()
        else:
            self._content(bytes(self._buffer))
            self._buffer.clear()

    def _chunked(self) -> None:
        buf = self._buffer
        while True:
            if self._trailer:
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                    self._done()
                elif (end := buf.find(b"\r\n\r\n")) >= 0:
                    del buf[: end + 4]
                    self._done()
                return
            if self._chunk_left:
                take = min(self._chunk_left, len(buf))
                self._content(bytes(buf[:take]))
                del buf[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    return
                self._crlf_due = True
            if self._crlf_due:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._crlf_due = False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            del buf[: line_end + 2]
            if size == 0:
                self._trailer = True
            else:
                self._chunk_left = size

    def _done(self) -> None:
        self._in_body = False
        if self._close and self.transport is not None:
            self.transport.close()
            self.alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, self._ttft_ns, self._sample))


@dataclass
class _Tally:
    latencies_ns: list[int] = field(default_factory=list)
    ttfts_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # status -> the first such answer's body

    def summary(self, spec: LoadSpec, measured_s: float, cpu_pct: float) -> dict[str, Any]:
        lat = sorted(v / 1e6 for v in self.latencies_ns)
        ttft = sorted(v / 1e6 for v in self.ttfts_ns)
        ok = len(lat)
        return {
            "mode": "open" if spec.rate else "closed",
            "connections": spec.connections,
            "rate": spec.rate,
            "seconds": measured_s,
            "ok": ok,
            "errors": dict(self.errors),
            "error_samples": self.samples,
            "rps": ok / measured_s if measured_s else 0.0,
            "p50_ms": percentile(lat, 50),
            "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else 0.0,
            "ttft_p50_ms": percentile(ttft, 50) if ttft else None,
            "ttft_p99_ms": percentile(ttft, 99) if ttft else None,
            "loadgen_cpu_pct": cpu_pct,
        }


class _Load:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.host, self.port, self.raw = spec.request_bytes()
        self.tally = _Tally()
        self.idle: list[_Connection] = []
        self.open_count = 0
        self.freed = asyncio.Condition()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    async def one(self, conn: _Connection | None, start_ns: int, counted: bool) -> _Connection | None:
        """One request from start_ns (sent now); returns the connection if it can be reused."""
        try:
            if conn is None or not conn.alive:
                conn = await self.connect()
            status, first_ns, sample = await asyncio.wait_for(conn.send(self.raw), self.spec.timeout)
        except TimeoutError:
            if counted:
                self.tally.errors["timeout"] += 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return None
        except OSError:
            if counted:
                self.tally.errors["connection"] += 1
            return None
        end_ns = time.perf_counter_ns()
        if counted:
            if status == 200:
                self.tally.latencies_ns.append(end_ns - start_ns)
                if self.spec.stream and first_ns is not None:
                    self.tally.ttfts_ns.append(first_ns - start_ns)
            else:
                self.tally.errors[str(status)] += 1
                self.tally.samples.setdefault(str(status), sample.decode(errors="replace"))
        return conn if conn.alive else None

    async def closed_worker(self, measure_from: int, stop_at: int) -> None:
        conn: _Connection | None = None
        while (now := time.perf_counter_ns()) < stop_at:
            conn = await self.one(conn, now, now >= measure_from)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def scheduled(self, due_ns: int, counted: bool) -> None:
        async with self.freed:
            while not self.idle and self.open_count >= self.spec.connections:
                await self.freed.wait()
            conn = self.idle.pop() if self.idle else None
            if conn is None:
                self.open_count += 1
        kept = await self.one(conn, due_ns, counted)
        async with self.freed:
            if kept is None:
                self.open_count -= 1
            else:
                self.idle.append(kept)
            self.freed.notify()

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        cpu0 = cpu_seconds()
        t0 = time.perf_counter_ns()
        measure_from = t0 + int(spec.warmup * 1e9)
        stop_at = measure_from + int(spec.seconds * 1e9)
        if spec.rate <= 0:
            await asyncio.gather(*(self.closed_worker(measure_from, stop_at) for _ in range(spec.connections)))
        else:
            tasks: list[asyncio.Task[None]] = []
            interval = 1e9 / spec.rate
            i = 0
            while (due := t0 + int(i * interval)) < stop_at:
                delay = (due - time.perf_counter_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.scheduled(due, due >= measure_from)))
                i += 1
            await asyncio.gather(*tasks)
            for conn in self.idle:
                if conn.transport is not None:
                    conn.transport.close()
        elapsed = (time.perf_counter_ns() - t0) / 1e9
        return self.tally.summary(spec, spec.seconds, 100 * (cpu_seconds() - cpu0) / elapsed)


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Drive spec's load in this event loop and summarise it."""
    return await _Load(spec).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="a LoadSpec as JSON")
    args = parser.parse_args(argv)
    spec = LoadSpec(**json.loads(args.spec))
    try:
        import uvloop  # noqa: PLC0415 - optional: plain asyncio without it
    except ImportError:
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
    print(json.dumps({"spec": asdict(spec), "result": result}))


if __name__ == "__main__":
    main()
