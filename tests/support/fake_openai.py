"""A local fake OpenAI-compatible provider that speaks the real HTTP wire protocol.

Gateway tests need a real upstream: real sockets, real chunked SSE framing, real
disconnects. The server harness and the test controls (``fail_next``,
``die_mid_stream_after``, ``token_delay``/``first_token_delay``, ``required_api_key``,
``requests``, ``cancelled``, ``reset``) live in FakeServer (tests/support/fake_server.py);
this module is OpenAI's wire format. It is deterministic and cheap per request so a
benchmark can use it as a mock upstream too::

    with FakeOpenAI() as fake:
        httpx.post(f"{fake.base_url}/chat/completions", json={...})

    python -m tests.support.fake_openai --port 9000 --token-delay 0.01 --first-token-delay 0.1

Chat replies are "Echo: " + the last user message's text; a "token" is a
whitespace-separated word. A forced tool_choice calls that tool; with tools offered
and a last message "use tool NAME: TEXT", the reply calls NAME with {"text": TEXT}.
"""

from __future__ import annotations

import base64
import functools
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import orjson
from starlette.responses import Response

from tests.support.fake_server import JSON, FakeServer, Request, embedding, run_cli, split_reply

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
    pieces, cut = split_reply(text, limit)
    return pieces, "length" if cut else "stop"


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


def _asked_tool(body: JSON, messages: list[JSON]) -> tuple[str, str] | None:
    """A tool call the conversation asks for without forcing one: when tools are offered and
    the last message is a user's "use tool NAME: TEXT", call NAME with {"text": TEXT}."""
    if not body.get("tools") or body.get("tool_choice") == "none" or messages[-1].get("role") != "user":
        return None
    text = _text(messages[-1].get("content"))
    if not text.startswith("use tool ") or ":" not in text:
        return None
    name, _, rest = text[len("use tool ") :].partition(":")
    return name.strip(), orjson.dumps({"text": rest.strip()}).decode()


def _usage(prompt: int, completion: int) -> JSON:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _embedding(text: str, dims: int) -> list[float]:
    """The shared hash vector rounded to float32, so the float and base64 encodings agree exactly."""
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *embedding(text, dims))))


def _sse(event: JSON) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


class FakeOpenAI(FakeServer):
    """Fake provider. Behaviour attributes may be changed from the test thread at any time."""

    provider: ClassVar[str] = "OpenAI"
    api_prefix: ClassVar[str] = "/v1"

    # -- FakeServer hooks ---------------------------------------------------------------

    @functools.cached_property
    def _routes(self) -> dict[tuple[str, str], Callable[[JSON], Awaitable[Response]]]:
        # Bound methods, so a subclass's override of an endpoint is the one served.
        return {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
        }

    async def _route(self, request: Request) -> Response:
        method, path, payload = request.method, request.path, request.json
        handler = self._routes.get((method, path))
        if handler is None:
            return self._error(404, f"Invalid URL ({method} {path})")
        if method == "POST" and not isinstance(payload, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        return await handler(payload or {})

    def _failure_body(self, status: int) -> JSON:
        return DEFAULT_FAILURE

    def _check_key(self, request: Request, key: str) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {key}":
            return self._json(BAD_API_KEY, 401)
        return None

    def die_mid_stream_after(self, n_chunks: int | None) -> None:
        """The next streamed response sends `n_chunks` SSE chunks, then drops the connection."""
        super().die_mid_stream_after(n_chunks)  # only here to keep OpenAI's keyword name

    # -- answering ----------------------------------------------------------------------

    def _error(self, status: int, message: str, param: str | None = None) -> Response:
        err = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        return self._json({"error": err}, status)

    def _chunks(self, events: list[JSON], usage: JSON | None) -> Response:
        """SSE response for `events`; `usage` (when include_usage) goes in a final choice-less chunk."""
        if usage is not None:
            for event in events:
                event["usage"] = None
            events.append({**events[0], "choices": [], "usage": usage})
        # Every chunk, and the [DONE] sentinel too, waits its token delay.
        return self._stream([*((_sse(e), True) for e in events), (_DONE, True)])

    # -- endpoints ----------------------------------------------------------------------

    async def _chat(self, body: JSON) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return self._error(400, "'messages' must be a non-empty array of message objects", "messages")
        model, n = body.get("model", "fake-model"), int(body.get("n") or 1)
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tool, args = _forced_tool(body), _TOOL_ARGS
        asked = _asked_tool(body, messages) if tool is None else None
        if asked is not None:
            tool, args = asked
        if tool is not None:
            pieces, finish = [args], "tool_calls"
        else:
            pieces, finish = _reply("Echo: " + last_user, body.get("max_completion_tokens", body.get("max_tokens")))
        usage = _usage(prompt_tokens, n * len("".join(pieces).split()))
        cid, created = f"chatcmpl-fake{next(self._ids)}", int(time.time())
        head = {"id": cid, "object": "chat.completion", "created": created, "model": model}
        call = {"id": "call_fake1", "type": "function", "function": {"name": tool, "arguments": args}}

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
        return self._chunks(events, usage if (body.get("stream_options") or {}).get("include_usage") else None)

    async def _completions(self, body: JSON) -> Response:
        prompts = _texts(body.get("prompt", ""))
        if prompts is None:
            return self._error(400, "'prompt' must be a string or an array of strings/tokens", "prompt")
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
        return self._chunks(events, usage if (body.get("stream_options") or {}).get("include_usage") else None)

    async def _embeddings(self, body: JSON) -> Response:
        texts = _texts(body.get("input"))
        if texts is None:
            return self._error(400, "'input' must be a string or an array of strings/tokens", "input")
        dims, fmt = body.get("dimensions") or 8, body.get("encoding_format") or "float"
        if not isinstance(dims, int) or dims < 1 or fmt not in ("float", "base64"):
            return self._error(400, "invalid 'dimensions' or 'encoding_format'", "dimensions")
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
        return self._json(MODELS)


def main(argv: list[str] | None = None) -> None:
    run_cli(
        FakeOpenAI, argv, description="Run the fake OpenAI provider in the foreground.", port=9000,
        key_help="require 'Authorization: Bearer <key>'",
    )  # fmt: skip


if __name__ == "__main__":
    main()
