"""A mock OpenAI-compatible upstream, cheap enough never to be the bottleneck.

Raw asyncio (uvloop when installed): one `asyncio.Protocol` per connection,
HTTP/1.1 keep-alive, every response's bytes computed once at start. It does
not parse JSON: a request is routed by its path, and a chat request streams
when its body holds `"stream": true` (with or without the space).

- `POST /v1/chat/completions`: a fixed completion (10 prompt, `--tokens`
  completion tokens); with `"stream": true`, SSE in chunked encoding: the first
  content chunk after `--ttft-ms`, then one every `--token-delay-ms`, then a
  choice-less usage chunk and `data: [DONE]`.
- `POST /v1/embeddings`: one 8-dimension vector.
- `GET /v1/models`, `GET /healthz`: small answers; anything else is 404.

Run: `python -m bench.mock_upstream --port 9000 [--ttft-ms 100 --token-delay-ms 10 --tokens 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from dataclasses import dataclass
from typing import cast

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_MODEL = "bench-model"


@dataclass(frozen=True)
class StreamShape:
    """How a streamed answer is paced."""

    ttft_ms: float = 100.0
    token_delay_ms: float = 10.0
    tokens: int = 20


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n".encode()
    return head + b"Content-Type: " + content_type + b"\r\n\r\n" + body


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _sse(event: object) -> bytes:
    return _chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def _usage(shape: StreamShape) -> dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": shape.tokens, "total_tokens": 10 + shape.tokens}


class Responses:
    """Every answer the mock gives, as bytes ready to write."""

    def __init__(self, shape: StreamShape) -> None:
        self.shape = shape
        text = " ".join(f"tok{i}" for i in range(shape.tokens))
        chat = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": _MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"},
            ],
            "usage": _usage(shape),
        }
        self.chat = _response("200 OK", json.dumps(chat).encode())
        embed = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
            "model": _MODEL,
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
        self.embeddings = _response("200 OK", json.dumps(embed).encode())
        models = {"object": "list", "data": [{"id": _MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
        self.models = _response("200 OK", json.dumps(models).encode())
        self.health = _response("200 OK", b'{"status":"ok"}')
        self.not_found = _response("404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        )
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": _MODEL}
        role = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        self.stream_tokens = [
            _sse({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]})
            for i in range(shape.tokens)
        ]
        # The role chunk rides with the first token: time to first token is the time to content.
        if self.stream_tokens:
            self.stream_tokens[0] = _sse(role) + self.stream_tokens[0]
        stop = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.stream_tail = (
            _sse(stop)
            + _sse({**base, "choices": [], "usage": _usage(shape)})
            + _chunk(b"data: [DONE]\n\n")
            + b"0\r\n\r\n"
        )


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: requests answered in order, keep-alive."""

    def __init__(self, responses: Responses) -> None:
        self._responses = responses
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._drain()

    def _drain(self) -> None:
        while self._transport is not None and not self._streaming:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._answer(head[: head.find(b"\r\n")], body)

    def _answer(self, request_line: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        parts = request_line.split(b" ")
        path = parts[1] if len(parts) > 1 else b""
        r = self._responses
        if path.endswith(b"/chat/completions"):
            if _STREAM.search(body):
                self._streaming = True
                asyncio.get_running_loop().create_task(self._stream(transport))
            else:
                transport.write(r.chat)
        elif path.endswith(b"/embeddings"):
            transport.write(r.embeddings)
        elif path.endswith(b"/models"):
            transport.write(r.models)
        elif path == b"/healthz":
            transport.write(r.health)
        else:
            transport.write(r.not_found)

    async def _stream(self, transport: asyncio.Transport) -> None:
        r = self._responses
        transport.write(r.stream_head)
        await asyncio.sleep(r.shape.ttft_ms / 1000)
        for i, token in enumerate(r.stream_tokens):
            if i:
                await asyncio.sleep(r.shape.token_delay_ms / 1000)
            if transport.is_closing():
                return
            transport.write(token)
        transport.write(r.stream_tail)
        self._streaming = False
        self._drain()


async def serve(host: str, port: int, shape: StreamShape) -> None:
    responses = Responses(shape)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(responses), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream on http://{host}:{port}/v1", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="delay before the first streamed token")
    parser.add_argument("--token-delay-ms", type=float, default=10.0, help="delay between streamed tokens")
    parser.add_argument("--tokens", type=int, default=20, help="completion tokens per answer")
    args = parser.parse_args(argv)
    shape = StreamShape(args.ttft_ms, args.token_delay_ms, args.tokens)
    try:
        import uvloop  # noqa: PLC0415 - optional: plain asyncio without it
    except ImportError:
        asyncio.run(serve(args.host, args.port, shape))
    else:
        uvloop.run(serve(args.host, args.port, shape))


if __name__ == "__main__":
    main()
