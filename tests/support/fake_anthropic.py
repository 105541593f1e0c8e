"""A local fake of Anthropic's Messages API that speaks the real HTTP wire protocol.

The server harness and the test controls (``fail_next``, ``die_mid_stream_after``,
``token_delay``/``first_token_delay``, ``required_api_key``, ``requests``, ``cancelled``,
``reset``) live in FakeServer (tests/support/fake_server.py). This module answers
``POST /v1/messages`` the way Anthropic does: a ``message`` object, or a stream of
named SSE events (``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``, ``content_block_stop``, ``message_delta``,
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

from typing import Any, ClassVar, Unpack

import orjson
from starlette.responses import Response

from tests.support.fake_server import JSON, FakeServer, Request, ServerOptions, cut_at_stop, run_cli, split_reply

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


def error_body(status: int, message: str) -> JSON:
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_fake",
    }


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
    text, stop_sequence = cut_at_stop(text, stops)
    pieces, cut = split_reply(text, limit)
    if cut:
        return pieces, "max_tokens", None
    return pieces, "end_turn" if stop_sequence is None else "stop_sequence", stop_sequence


def _forced_tool(body: JSON) -> str | None:
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {}
    if not tools:
        return None
    if choice.get("type") == "tool":
        return str(choice["name"])
    if choice.get("type") == "any":
        return str(tools[0]["name"])
    return None


class FakeAnthropic(FakeServer):
    """Fake Anthropic API. Behaviour attributes may be changed from the test thread at any time."""

    provider: ClassVar[str] = "Anthropic"
    api_prefix: ClassVar[str] = "/v1"
    response_headers: ClassVar[dict[str, str]] = {"request-id": "req_fake"}  # the real API stamps every response

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Unpack[ServerOptions]) -> None:
        # token_delay paces content_block_delta events; first_token_delay comes before
        # message_start / a non-stream answer; required_api_key is checked against x-api-key.
        super().__init__(host, port, **options)
        # Prompt-cache counts reported in usage (Anthropic's input_tokens exclude them).
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self._error_after: tuple[int, JSON] | None = None

    # -- FakeServer hooks ---------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        method, path, payload = request.method, request.path, request.json
        if (method, path) != ("POST", "/v1/messages"):
            return self._error(404, f"Not found: {method} {path}")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        if not isinstance(payload, dict):
            return self._error(400, "There was an issue with your request body: invalid JSON")
        return await self._messages(payload)

    def _failure_body(self, status: int) -> JSON:
        return error_body(status, "fake failure")

    def _check_key(self, request: Request, key: str) -> Response | None:
        if request.headers.get("x-api-key") != key:
            return self._error(401, "invalid x-api-key")
        return None

    # -- controls -----------------------------------------------------------------------

    def error_mid_stream_after(
        self, n_events: int, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> None:
        """The next stream sends `n_events` SSE events, then an `error` event, and ends."""
        self._error_after = (n_events, {"type": "error", "error": {"type": error_type, "message": message}})

    def reset(self) -> None:
        super().reset()
        self.cache_read_tokens = self.cache_write_tokens = 0
        self._error_after = None

    # -- the endpoint -------------------------------------------------------------------

    def _error(self, status: int, message: str) -> Response:
        return self._json(error_body(status, message), status)

    async def _messages(self, body: JSON) -> Response:
        problem = validate(body)
        if problem:
            return self._error(400, problem)
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
            answer = {**head, "content": [block], "stop_reason": stop_reason, "stop_sequence": stop_sequence}
            return await self._answer({**answer, "usage": usage})

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
        return self._events(events)

    def _events(self, events: list[tuple[str, JSON]]) -> Response:
        """Named SSE events; error_mid_stream_after replaces the rest of the stream by one `error` event."""
        # Only the first event and the deltas are paced, like the real API's token timing.
        frames = [(_sse(name, data), i == 0 or name == "content_block_delta") for i, (name, data) in enumerate(events)]
        error_after, self._error_after = self._error_after, None  # one-shot, claimed by this stream
        if error_after is not None and 0 <= error_after[0] < len(frames):
            frames[error_after[0] :] = [(_sse("error", error_after[1]), False)]
        return self._stream(frames)


def main(argv: list[str] | None = None) -> None:
    run_cli(
        FakeAnthropic, argv, description="Run the fake Anthropic provider in the foreground.", port=9001,
        key_help="require 'x-api-key: <key>'",
    )  # fmt: skip


if __name__ == "__main__":
    main()
