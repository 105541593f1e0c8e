"""The HTTP side of both floors: uvicorn (httptools, uvloop) and a raw ASGI app, no framework.

`POST /v1/chat/completions` reads the body, parses it (orjson), refuses what is not a
non-stream chat request with a 400, and forwards it: straight to the upstream
(`--upstream`, the `floor-nohop` chain) or through one `grpc.aio` unary call to
bench.floors.hop (`--hop`, the `floor-hop` chain). The answer is the upstream's JSON as it
came. `GET /healthz` answers 200. The upstream pool or the gRPC channel is opened in the
lifespan, on the server's own loop.

    python -m bench.floors.edge --port 9100 --upstream http://127.0.0.1:9000/v1/chat/completions
    python -m bench.floors.edge --port 9100 --hop 127.0.0.1:9101
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import uvicorn

from bench.floors.hop import CHAT_METHOD
from bench.floors.upstream import UpstreamError, UpstreamPool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Forward = Callable[[bytes], Awaitable[tuple[int, bytes]]]
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class EdgeSettings:
    """Exactly one of upstream (a chat completions URL) and hop (a gRPC host:port)."""

    upstream: str | None = None
    hop: str | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"type": kind, "message": message}})


class EdgeApp:
    def __init__(self, settings: EdgeSettings) -> None:
        self._settings = settings
        self._forward: Forward | None = None
        self._close: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            status, body = await self._chat(await _read_body(receive))
        elif scope["method"] == "GET" and scope["path"] == "/healthz":
            status, body = 200, b'{"status":"ok"}'
        else:
            status, body = _error(404, "not found")
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": body})

    async def _chat(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return _error(400, "a chat request needs a model")
        if not isinstance(request.get("messages"), list):
            return _error(400, "a chat request needs messages")
        if request.get("stream"):
            return _error(400, "the floor does not stream")
        assert self._forward is not None, "requests arrive only after the lifespan started"
        return await self._forward(orjson.dumps(request))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._close is not None:
                    await self._close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _open(self) -> None:
        if self._settings.hop is not None:
            channel = grpc.aio.insecure_channel(self._settings.hop)
            # No (de)serializers: the request and the answer cross as bytes.
            call = channel.unary_unary(CHAT_METHOD, request_serializer=None, response_deserializer=None)

            async def through_hop(body: bytes) -> tuple[int, bytes]:
                try:
                    answer: bytes = await call(body, timeout=30.0)
                except grpc.aio.AioRpcError as exc:
                    return _error(502, f"hop: {exc.code().name}: {exc.details()}", "upstream_error")
                return 200, answer

            async def close_channel() -> None:
                await channel.close(grace=None)

            self._forward, self._close = through_hop, close_channel
        else:
            assert self._settings.upstream is not None
            pool = UpstreamPool(self._settings.upstream)

            async def direct(body: bytes) -> tuple[int, bytes]:
                try:
                    return await pool.post(body)
                except UpstreamError as exc:
                    return _error(502, str(exc), "upstream_error")

            async def close_pool() -> None:
                pool.close()

            self._forward, self._close = direct, close_pool


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream", help="call this chat completions URL directly (no hop)")
    where.add_argument("--hop", help="call bench.floors.hop at this host:port")
    args = parser.parse_args(argv)
    app = EdgeApp(EdgeSettings(upstream=args.upstream, hop=args.hop))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_level="warning",
    )  # fmt: skip
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
