"""A local fake of Anthropic's Messages API that speaks the real HTTP wire protocol.

It has the control surface of FakeOpenAI (``fail_next``, ``die_mid_stream_after``,
``token_delay``/``first_token_delay``, ``required_api_key``, ``requests``, ``cancelled``,
``reset``) and answers ``POST /v1/messages`` the way Anthropic does: a ``message``
object, or a stream of named SSE events (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``), and errors as ``{"type": "error", "error": {"type", "message"}}``.
Like the real server it refuses a request without ``max_tokens``, with roles that do
not alternate, or whose first message is not the user's::

    with FakeAnthropic() as fake:
        httpx.post(f"{fake.base_url}/messages", headers={"anthropic-version": "2023-06-01"}, json={...})

    python -m tests.support.fake_anthropic --port 9001 --token-delay 0.01

Replies are "Echo: " + the text of the last user message (or of its tool results);
a forced tool choice ({"type": "any"} or {"type": "tool"}) answers with a tool_use block.
A "token" is a whitespace-separated word.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import orjson
import uvicorn
from starlette.responses import Response, StreamingResponse

JSON = dict[str, Any]

_WORD = re.compile(r"\S+\s*")
TOOL_INPUT: JSON = {"x": 1}
# The tool input as Anthropic streams it: an empty fragment first, then pieces of the JSON.
_TOOL_FRAGMENTS = ("", '{"x": ', "1}")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_REQUEST_KEYS = {
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "service_tier",
}  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class _Died(Exception):
    """Raised inside a stream generator to drop the connection mid-stream."""


def error_body(status: int, message: str) -> JSON:
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_fake",
    }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, {"request-id": "req_fake", **(headers or {})}, "application/json")


def _error(status: int, message: str) -> Response:
    return _json(error_body(status, message), status)


def _sse(name: str, data: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        content = block.get("content", "")
        return content if isinstance(content, str) else "".join(_block_text(b) for b in content or ())
    return ""


def _text(content: Any) -> str:
    """Text of a message: its text blocks, or else its tool results."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else []
    texts = [_block_text(b) for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    return "".join(texts) if texts else "".join(_block_text(b) for b in blocks)


def _words(body: JSON) -> int:
    """Input "tokens": words of the system prompt and every message."""
    system = body.get("system")
    text = _text(system) if system is not None else ""
    return len(text.split()) + sum(len(_text(m.get("content")).split()) for m in body["messages"])


def _validate_block(block: Any, role: str, where: str, tool_ids: set[str]) -> str | None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return f"{where}.type: Field required"
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            return f"{where}: text content blocks must be non-empty"
    elif kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in _IMAGE_TYPES or not isinstance(source.get("data"), str):
                return f"{where}.source: invalid base64 image source"
        elif source.get("type") == "url":
            if not str(source.get("url", "")).startswith(("https://", "http://")):
                return f"{where}.source.url: must be an http(s) URL"
        else:
            return f"{where}.source.type: Input should be 'base64' or 'url'"
    elif kind == "tool_use":
        if role != "assistant":
            return f"{where}: tool_use blocks may only appear in assistant messages"
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            return f"{where}: tool_use blocks need an id and a name"
        if not isinstance(block.get("input"), dict):
            return f"{where}.input: Input should be a valid dictionary"
    elif kind == "tool_result":
        if role != "user":
            return f"{where}: tool_result blocks may only appear in user messages"
        if block.get("tool_use_id") not in tool_ids:
            return (
                f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block.get('tool_use_id')}. "
                "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            )
    else:
        return f"{where}.type: unknown content block type '{kind}'"
    return None


def validate(body: JSON) -> str | None:
    """What a real server would refuse in this request body, or None."""
    extra = sorted(set(body) - _REQUEST_KEYS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for name, hi in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= hi):
            return f"{name}: Input should be less than or equal to {hi:g}"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or a list of text blocks"
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: only user_id is permitted"
    tools = body.get("tools") or []
    names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{i}.name: Field required"
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.input_schema: Input should be a JSON Schema of type object"
        if set(tool) - {"name", "description", "input_schema", "cache_control"}:
            return f"tools.{i}: Extra inputs are not permitted"
        names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return f"tool_choice.name: no tool named {choice.get('name')!r}"
    previous_role: str | None = None
    tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        role = message["role"]
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous_role:
            return (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        content = message.get("content")
        if not isinstance(content, (str, list)):
            return f"messages.{i}.content: Input should be a valid string or list of content blocks"
        if not content and not (i == len(messages) - 1 and role == "assistant"):
            return (
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        for j, block in enumerate(content if isinstance(content, list) else ()):
            problem = _validate_block(block, role, f"messages.{i}.content.{j}", tool_ids)
            if problem:
                return problem
        blocks = content if isinstance(content, list) else []
        tool_ids = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        previous_role = role
    return None


def _reply(text: str, limit: int, stops: list[str]) -> tuple[list[str], str, str | None]:
    """Split a reply into per-token pieces; returns (pieces, stop_reason, stop_sequence)."""
    found = [(i, s) for s in stops if s and (i := text.find(s)) >= 0]
    stop_reason, stop_sequence = "end_turn", None
    if found:
        cut, stop_sequence = min(found)
        text, stop_reason = text[:cut], "stop_sequence"
    pieces = _WORD.findall(text)
    if limit < len(pieces):
        pieces = pieces[:limit]
        if pieces:
            pieces[-1] = pieces[-1].rstrip()
        return pieces, "max_tokens", None
    return pieces, stop_reason, stop_sequence


def _forced_tool(body: JSON) -> str | None:
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {}
    if not tools:
        return None
    if choice.get("type") == "tool":
        return str(choice["name"])
    if choice.get("type") == "any":
        return str(tools[0]["name"])
    return None


class FakeAnthropic:
    """Fake Anthropic API. Behaviour attributes may be changed from the test thread at any time."""

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
        self.token_delay = token_delay  # seconds before each content_block_delta event
        self.first_token_delay = first_token_delay  # before message_start / a non-stream answer
        self.required_api_key = required_api_key  # checked against the x-api-key header
        self.record_requests = record_requests
        # Prompt-cache counts reported in usage (Anthropic's input_tokens exclude them).
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.requests: list[JSON] = []
        self.cancelled = 0  # streams whose client went away before the stream finished
        self._defaults = (token_delay, first_token_delay, required_api_key)
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._failure: tuple[int, JSON, dict[str, str]] | None = None
        self._fail_times = 0
        self._die_after: int | None = None
        self._error_after: tuple[int, JSON] | None = None
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- controls ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def fail_next(self, status: int, body: JSON | None = None, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests get `status` with an Anthropic error body."""
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failure = (status, body if body is not None else error_body(status, "fake failure"), headers)
            self._fail_times = times

    def die_mid_stream_after(self, n_events: int | None) -> None:
        """The next stream sends `n_events` SSE events, then drops the connection."""
        self._die_after = n_events

    def error_mid_stream_after(
        self, n_events: int, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> None:
        """The next stream sends `n_events` SSE events, then an `error` event, and ends."""
        self._error_after = (n_events, {"type": "error", "error": {"type": error_type, "message": message}})

    def reset(self) -> None:
        """Clear records and one-shot behaviours, restore constructor settings (server keeps running)."""
        self.token_delay, self.first_token_delay, self.required_api_key = self._defaults
        self.cache_read_tokens = self.cache_write_tokens = 0
        self.requests.clear()
        self.cancelled = 0
        self._die_after = self._error_after = None
        with self._lock:
            self._failure, self._fail_times = None, 0

    # -- lifecycle --------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock

    def _make_server(self, log_level: str | None) -> uvicorn.Server:
        # No logging setup of our own, and no websockets import (its warnings break -W error).
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
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-anthropic:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("fake Anthropic server did not start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self._shutdown_timeout + 5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, log_level: str = "warning") -> None:
        sock = self._bind()
        print(f"fake Anthropic serving on {self.base_url}", flush=True)
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
            payload = body.decode("utf-8", "replace")
        if self.record_requests:
            self.requests.append({"method": method, "path": path, "headers": headers, "json": payload})

        response = self._gate(headers)
        if response is None:
            if (method, path) != ("POST", "/v1/messages"):
                response = _error(404, f"Not found: {method} {path}")
            elif not headers.get("anthropic-version"):
                response = _error(400, "anthropic-version: header is required")
            elif not isinstance(payload, dict):
                response = _error(400, "There was an issue with your request body: invalid JSON")
            else:
                response = await self._messages(payload)
        try:
            await response(scope, receive, send)
        except _Died:
            pass  # uvicorn sees an unfinished response and closes the socket
        finally:
            if isinstance(response, StreamingResponse):
                await response.body_iterator.aclose()  # type: ignore[attr-defined]

    def _gate(self, headers: dict[str, str]) -> Response | None:
        """Injected failures first, then the API key check."""
        if self._fail_times:
            with self._lock:
                failure = self._failure if self._fail_times > 0 else None
                if failure is not None:
                    self._fail_times -= 1
            if failure is not None:
                return _json(failure[1], failure[0], failure[2])
        key = self.required_api_key
        if key is not None and headers.get("x-api-key") != key:
            return _error(401, "invalid x-api-key")
        return None

    # -- the endpoint -----------------------------------------------------------------

    async def _messages(self, body: JSON) -> Response:
        problem = validate(body)
        if problem:
            return _error(400, problem)
        messages = body["messages"]
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")
        tool = _forced_tool(body)
        usage: JSON = {
            "input_tokens": _words(body),
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "output_tokens": 0,
        }
        head: JSON = {"id": f"msg_fake{next(self._ids):020d}", "type": "message", "role": "assistant"}
        head["model"] = body["model"]
        stop_sequence = None
        if tool is not None:
            pieces, stop_reason = list(_TOOL_FRAGMENTS), "tool_use"
            usage["output_tokens"] = len("".join(pieces).split())
            block: JSON = {"type": "tool_use", "id": "toolu_fake1", "name": tool, "input": TOOL_INPUT}
        else:
            pieces, stop_reason, stop_sequence = _reply(
                "Echo: " + last_user, body["max_tokens"], body.get("stop_sequences") or []
            )
            usage["output_tokens"] = len(pieces)
            block = {"type": "text", "text": "".join(pieces)}

        if not body.get("stream"):
            if self.first_token_delay > 0:
                await asyncio.sleep(self.first_token_delay)
            answer = {**head, "content": [block], "stop_reason": stop_reason, "stop_sequence": stop_sequence}
            return _json({**answer, "usage": usage})

        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str, JSON]] = [
            ("message_start", {"type": "message_start", "message": {
                **head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage,
            }}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": (
                {**block, "input": {}} if tool is not None else {"type": "text", "text": ""}
            )}),
            ("ping", {"type": "ping"}),
        ]  # fmt: skip
        kind = "input_json_delta" if tool is not None else "text_delta"
        field = "partial_json" if tool is not None else "text"
        for piece in pieces:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: piece}}
            events.append(("content_block_delta", delta))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {
                "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": usage["output_tokens"]},
            }),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        return self._stream(events)

    def _stream(self, events: list[tuple[str, JSON]]) -> StreamingResponse:
        die_after, self._die_after = self._die_after, None  # one-shot, claimed by this stream
        error_after, self._error_after = self._error_after, None

        async def generate() -> AsyncIterator[bytes]:
            finished = died = False
            try:
                for i, (name, data) in enumerate(events):
                    if i == die_after:
                        died = True
                        raise _Died
                    if error_after is not None and i == error_after[0]:
                        yield _sse("error", error_after[1])
                        break
                    delay = self.first_token_delay if i == 0 else self.token_delay
                    if delay > 0 and (i == 0 or name == "content_block_delta"):
                        await asyncio.sleep(delay)  # also where a client disconnect cancels us
                    yield _sse(name, data)
                finished = True
            finally:
                if not finished and not died:
                    self.cancelled += 1

        return StreamingResponse(generate(), media_type="text/event-stream", headers={"request-id": "req_fake"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Anthropic provider in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require 'x-api-key: <key>'")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    fake = FakeAnthropic(
        args.host, args.port, token_delay=args.token_delay, first_token_delay=args.first_token_delay,
        required_api_key=args.api_key, record_requests=args.record,
    )  # fmt: skip
    fake.serve_forever(args.log_level)


if __name__ == "__main__":
    main()
