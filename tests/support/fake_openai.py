"""A local fake OpenAI-compatible provider that speaks the real HTTP wire protocol.

Gateway tests need a real upstream: real sockets, real chunked SSE framing, real
disconnects. The fake is a plain ASGI callable (Starlette is used only for its
response classes) served by uvicorn in a daemon thread with its own event loop, so
sync tests can drive it. It is deterministic and cheap per request so a benchmark
can use it as a mock upstream too::

    with FakeOpenAI() as fake:
        httpx.post(f"{fake.base_url}/chat/completions", json={...})

    python -m tests.support.fake_openai --port 9000 --token-delay 0.01 --first-token-delay 0.1

Chat replies are "Echo: " + the last user message's text; a "token" is a
whitespace-separated word.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import orjson
import uvicorn
from starlette.responses import Response, StreamingResponse

JSON = dict[str, Any]

# A word plus its trailing whitespace: streamed pieces concatenate back to exactly the
# non-stream content, and each piece is one "token".
_WORD = re.compile(r"\S+\s*")
_TOOL_ARGS = '{"x": 1}'
_DONE = b"data: [DONE]\n\n"
DEFAULT_FAILURE: JSON = {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}}
BAD_API_KEY: JSON = {
    "error": {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
MODELS: JSON = {
    "object": "list",
    "data": [{"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "fake"}],
}


class _Died(Exception):
    """Raised inside a stream generator to drop the connection without the terminating chunk."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, "application/json")


def _error(status: int, message: str, param: str | None = None) -> Response:
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return _json({"error": err}, status)


def _text(content: Any) -> str:
    """Text of a message content: a string, None, or a list of parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _texts(value: Any) -> list[str] | None:
    """Normalise a prompt/input (str, [str], [int] or [[int]]) to texts; None if malformed.

    Token-id lists become space-joined ids so that the word count equals the token count.
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(t, int) for t in value):
        return [" ".join(map(str, value))]
    if all(isinstance(t, str) for t in value):
        return value
    if all(isinstance(t, list) and all(isinstance(i, int) for i in t) for t in value):
        return [" ".join(map(str, t)) for t in value]
    return None


def _reply(text: str, limit: Any) -> tuple[list[str], str]:
    """Split a reply into per-token pieces, cut to `limit` tokens; returns (pieces, finish_reason)."""
    pieces = _WORD.findall(text)
    if isinstance(limit, int) and limit < len(pieces):
        pieces = pieces[: max(limit, 0)]
        if pieces:
            pieces[-1] = pieces[-1].rstrip()
        return pieces, "length"
    return pieces, "stop"


def _forced_tool(body: JSON) -> str | None:
    """Name of the function the request forces us to call, if any."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools or not isinstance(tools, list):
        return None
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name", ""))
    if choice == "required":
        return str((tools[0].get("function") or {}).get("name", ""))
    return None


def _usage(prompt: int, completion: int) -> JSON:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _embedding(text: str, dims: int) -> list[float]:
    """Deterministic unit vector from a hash of the text (float32-exact, so both encodings agree)."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(text.encode()).digest(4 * dims))
    vec = [v / 2147483648.0 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in vec))))


class FakeOpenAI:
    """Fake provider. Behaviour attributes may be changed from the test thread at any time."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        required_api_key: str | None = None,
        record_requests: bool = True,
        shutdown_timeout: int = 1,
    ) -> None:
        self.host, self.port = host, port
        self.token_delay = token_delay  # seconds between stream chunks
        self.first_token_delay = first_token_delay  # before the first chunk / a non-stream answer
        self.required_api_key = required_api_key
        self.record_requests = record_requests  # a benchmark turns this off to keep memory flat
        self.requests: list[JSON] = []
        self.cancelled = 0  # streams whose client went away before the stream finished
        self._defaults = (token_delay, first_token_delay, required_api_key)
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()  # fail_next is read-modify-write from two threads
        self._failure: tuple[int, JSON, dict[str, str]] | None = None
        self._fail_times = 0
        self._die_after: int | None = None
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Callable[[JSON], Awaitable[Response]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
        }

    # -- controls ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def fail_next(self, status: int, body: JSON | None = None, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests (any endpoint) get `status` with an OpenAI error body."""
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failure = (status, body if body is not None else DEFAULT_FAILURE, headers)
            self._fail_times = times

    def die_mid_stream_after(self, n_chunks: int | None) -> None:
        """The next streamed response sends `n_chunks` SSE events, then drops the connection."""
        self._die_after = n_chunks

    def reset(self) -> None:
        """Clear records and one-shot behaviours, restore constructor settings (server keeps running)."""
        self.token_delay, self.first_token_delay, self.required_api_key = self._defaults
        self.requests.clear()
        self.cancelled = 0
        self._die_after = None
        with self._lock:
            self._failure, self._fail_times = None, 0

    # -- lifecycle --------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        # Binding ourselves (rather than letting uvicorn bind port 0) makes the port known up front.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock

    def _make_server(self, log_level: str | None) -> uvicorn.Server:
        # log_config=None and log_level=None: do not touch the test process's logging setup.
        # ws="none" avoids importing websockets (its deprecation warnings break -W error).
        config = uvicorn.Config(
            self, lifespan="off", interface="asgi3", ws="none", log_config=None, log_level=log_level,
            access_log=False, proxy_headers=False, server_header=False,
            timeout_graceful_shutdown=self._shutdown_timeout,
        )  # fmt: skip
        return uvicorn.Server(config)

    def start(self) -> Self:
        sock = self._bind()
        self._server = server = self._make_server(None)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-openai:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:  # set once the listening server is accepting connections
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self._shutdown_timeout + 5)
        if thread.is_alive():  # a stuck stream: skip the graceful wait
            server.force_exit = True
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, log_level: str = "warning") -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM (uvicorn handles them)."""
        sock = self._bind()
        print(f"fake OpenAI serving on {self.base_url}", flush=True)
        # uvicorn re-raises the SIGINT after its graceful shutdown
        with contextlib.suppress(KeyboardInterrupt):
            self._make_server(log_level).run(sockets=[sock])

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: JSON, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = body.decode("utf-8", "replace")  # recorded as-is; handlers reject non-objects
        if self.record_requests:
            self.requests.append({"method": method, "path": path, "headers": headers, "json": payload})

        response = self._gate(headers)
        if response is None:
            handler = self._routes.get((method, path))
            if handler is None:
                response = _error(404, f"Invalid URL ({method} {path})")
            elif method == "POST" and not isinstance(payload, dict):
                response = _error(400, "We could not parse the JSON body of your request.")
            else:
                response = await handler(payload or {})
        try:
            await response(scope, receive, send)
        except _Died:
            pass  # uvicorn sees an unfinished response and closes the socket: no last chunk
        finally:
            if isinstance(response, StreamingResponse):
                # If the send was cancelled the generator is parked at a `yield`; closing it runs
                # its `finally` now (which counts the cancellation) rather than at GC time.
                await response.body_iterator.aclose()  # type: ignore[attr-defined]

    def _gate(self, headers: dict[str, str]) -> Response | None:
        """Injected failures first, then the API key check."""
        if self._fail_times:  # unlocked peek keeps the common path cheap; the lock decides
            with self._lock:
                failure = self._failure if self._fail_times > 0 else None
                if failure is not None:
                    self._fail_times -= 1
            if failure is not None:
                return _json(failure[1], failure[0], failure[2])
        key = self.required_api_key
        if key is not None and headers.get("authorization") != f"Bearer {key}":
            return _json(BAD_API_KEY, 401)
        return None

    async def _answer(self, body: JSON) -> Response:
        if self.first_token_delay > 0:
            await asyncio.sleep(self.first_token_delay)
        return _json(body)

    def _stream(self, events: list[JSON], usage: JSON | None) -> StreamingResponse:
        """SSE response for `events`; `usage` (when include_usage) goes in a final choice-less chunk."""
        if usage is not None:
            for event in events:
                event["usage"] = None
            events.append({**events[0], "choices": [], "usage": usage})
        die_after, self._die_after = self._die_after, None  # one-shot, claimed by this stream

        async def generate() -> AsyncIterator[bytes]:
            finished = died = False
            try:
                for i, event in enumerate([*events, None]):
                    if i == die_after:
                        died = True
                        raise _Died
                    delay = self.first_token_delay if i == 0 else self.token_delay
                    if delay > 0:
                        await asyncio.sleep(delay)  # also where a client disconnect cancels us
                    yield _DONE if event is None else b"data: " + orjson.dumps(event) + b"\n\n"
                finished = True
            finally:
                if not finished and not died:
                    self.cancelled += 1

        return StreamingResponse(generate(), media_type="text/event-stream")

    # -- endpoints --------------------------------------------------------------------

    async def _chat(self, body: JSON) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(400, "'messages' must be a non-empty array of message objects", "messages")
        model, n = body.get("model", "fake-model"), int(body.get("n") or 1)
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tool = _forced_tool(body)
        if tool is not None:
            pieces, finish = [_TOOL_ARGS], "tool_calls"
        else:
            pieces, finish = _reply("Echo: " + last_user, body.get("max_completion_tokens", body.get("max_tokens")))
        usage = _usage(prompt_tokens, n * len("".join(pieces).split()))
        cid, created = f"chatcmpl-fake{next(self._ids)}", int(time.time())
        head = {"id": cid, "object": "chat.completion", "created": created, "model": model}
        call = {"id": "call_fake1", "type": "function", "function": {"name": tool, "arguments": _TOOL_ARGS}}

        if not body.get("stream"):
            if tool is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
            else:
                message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n)]
            return await self._answer({**head, "choices": choices, "usage": usage, "system_fingerprint": "fp_fake"})

        head.update(object="chat.completion.chunk", system_fingerprint="fp_fake")

        def chunk(i: int, delta: JSON, finish_reason: str | None = None) -> JSON:
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "choices": [choice]}

        deltas: list[JSON]
        if tool is not None:  # stream the call like OpenAI: name first, then argument fragments
            named = {"index": 0, "id": "call_fake1", "type": "function", "function": {"name": tool, "arguments": ""}}
            first = {"role": "assistant", "content": None, "tool_calls": [named], "refusal": None}
            deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        else:
            first = {"role": "assistant", "content": "", "refusal": None}
            deltas = [{"content": p} for p in pieces]
        events = [chunk(i, first) for i in range(n)]
        events += [chunk(i, d) for d in deltas for i in range(n)]
        events += [chunk(i, {}, finish) for i in range(n)]
        return self._stream(events, usage if (body.get("stream_options") or {}).get("include_usage") else None)

    async def _completions(self, body: JSON) -> Response:
        prompts = _texts(body.get("prompt", ""))
        if prompts is None:
            return _error(400, "'prompt' must be a string or an array of strings/tokens", "prompt")
        model, n = body.get("model", "fake-model"), int(body.get("n") or 1)
        replies = [_reply("Echo: " + p, body.get("max_tokens")) for p in prompts for _ in range(n)]
        usage = _usage(sum(len(p.split()) for p in prompts), sum(len(r[0]) for r in replies))
        head = {"id": f"cmpl-fake{next(self._ids)}", "object": "text_completion", "created": int(time.time())}
        head["model"] = model

        if not body.get("stream"):
            choices = [
                {"text": "".join(pieces), "index": i, "logprobs": None, "finish_reason": finish}
                for i, (pieces, finish) in enumerate(replies)
            ]
            return await self._answer({**head, "choices": choices, "usage": usage})

        def chunk(i: int, text: str, finish_reason: str | None = None) -> JSON:
            return {**head, "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": finish_reason}]}

        events = [chunk(i, p) for i, (pieces, _) in enumerate(replies) for p in pieces]
        events += [chunk(i, "", finish) for i, (_, finish) in enumerate(replies)]
        return self._stream(events, usage if (body.get("stream_options") or {}).get("include_usage") else None)

    async def _embeddings(self, body: JSON) -> Response:
        texts = _texts(body.get("input"))
        if texts is None:
            return _error(400, "'input' must be a string or an array of strings/tokens", "input")
        dims, fmt = body.get("dimensions") or 8, body.get("encoding_format") or "float"
        if not isinstance(dims, int) or dims < 1 or fmt not in ("float", "base64"):
            return _error(400, "invalid 'dimensions' or 'encoding_format'", "dimensions")
        data = []
        for i, text in enumerate(texts):
            vec: Any = _embedding(text, dims)
            if fmt == "base64":
                vec = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._answer({"object": "list", "data": data, "model": body.get("model", ""), "usage": usage})

    async def _models(self, body: JSON) -> Response:
        return _json(MODELS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI provider in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    parser.add_argument("--record", action="store_true", help="keep every request in memory (off: flat memory)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        args.host, args.port, token_delay=args.token_delay, first_token_delay=args.first_token_delay,
        required_api_key=args.api_key, record_requests=args.record,
    )  # fmt: skip
    fake.serve_forever(args.log_level)


if __name__ == "__main__":
    main()
