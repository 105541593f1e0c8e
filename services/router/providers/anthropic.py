"""Anthropic's Messages API (POST {base_url}/messages), translated to and from
the router's OpenAI-shaped messages.

Requests: system and developer messages become the top-level `system`;
user, assistant and tool messages become alternating user/assistant turns of
content blocks (text, image, tool_use, tool_result). Answers: text blocks are
joined into the message content, tool_use blocks become tool calls, and
usage counts cached prompt tokens as prompt tokens, as OpenAI does.

Streams are read event by event (`event:`/`data:` lines ended by a blank
line) and each event is passed on as soon as it arrives; the last chunk of a
stream carries usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.common.wire import fields
from services.router.providers.base import Target
from services.router.providers.openai import transport_error

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; used when neither the request nor the catalog model sets one.
DEFAULT_MAX_TOKENS = 4096

_FINISH = {
    "end_turn": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP,
    "pause_turn": pb.FINISH_REASON_STOP,
    "max_tokens": pb.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": pb.FINISH_REASON_LENGTH,
    "tool_use": pb.FINISH_REASON_TOOL_CALLS,
    "refusal": pb.FINISH_REASON_CONTENT_FILTER,
}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

JSON = dict[str, Any]


# ---------------------------------------------------------------- errors


def anthropic_error(status: int, body: bytes, provider: str, retry_after: str | None = None) -> InterlockError:
    """Map an Anthropic error answer ({"type": "error", "error": {"type", "message"}})."""
    message = f"provider {provider} answered HTTP {status}"
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        detail = orjson.loads(body).get("error")
        if isinstance(detail, dict) and detail.get("message"):
            message = f"{message}: {detail['message']}"
    retry = None
    if retry_after:
        with contextlib.suppress(ValueError):
            retry = float(retry_after)
    if status in (400, 404, 413, 422):
        # The request itself was refused: the client's to fix, not ours to retry.
        return InvalidRequestError(message, code="upstream_rejected_request")
    if status == 429:
        return UpstreamError(message, code="upstream_rate_limited", http_status=503, retry_after=retry)
    if status == 529:
        return UpstreamError(message, code="upstream_overloaded", http_status=503, retry_after=retry)
    if status in (401, 403):
        return UpstreamError(
            f"provider {provider} refused the gateway's credentials", code="provider_auth_failed", http_status=502
        )
    return UpstreamError(message, code="upstream_error", http_status=502, retry_after=retry)


def _unsupported(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="unsupported_parameter", param=param)


# ---------------------------------------------------------------- requests


def _part_text(message: pb.Message) -> str:
    if message.parts:
        return "".join(p.text for p in message.parts if p.WhichOneof("part") == "text")
    return message.content


def _image_block(url: str, param: str) -> JSON:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or media_type not in _IMAGE_TYPES:
            raise InvalidRequestError(
                f"'{param}' must be a base64 data: URL of a JPEG, PNG, GIF or WebP image for this provider.",
                code="invalid_image_url",
                param=param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(f"'{param}' must be an https or a data: URL.", code="invalid_image_url", param=param)


def _content_blocks(message: pb.Message, param: str) -> list[JSON]:
    blocks: list[JSON] = []
    if message.parts:
        for j, part in enumerate(message.parts):
            which = part.WhichOneof("part")
            if which == "text":
                if part.text:
                    blocks.append({"type": "text", "text": part.text})
            elif which == "image_url":
                blocks.append(_image_block(part.image_url.url, f"{param}.content[{j}].image_url.url"))
            else:
                kind = (fields.loads(part.other_json) or {}).get("type", "?") if part.other_json else "?"
                raise _unsupported(
                    f"Content parts of type '{kind}' are not supported by this provider.", f"{param}.content[{j}]"
                )
    elif message.content:
        blocks.append({"type": "text", "text": message.content})
    return blocks


def _tool_use_block(call: pb.ToolCall, param: str) -> JSON:
    raw = call.function.arguments
    try:
        arguments = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(
            f"'{param}.function.arguments' must be a JSON object for this provider.",
            code="invalid_tool_arguments",
            param=f"{param}.function.arguments",
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def _messages(request: pb.ChatRequest) -> tuple[str, list[JSON]]:
    """The `system` text and the alternating user/assistant turns of a chat request."""
    system: list[str] = []
    turns: list[JSON] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}]"
        if message.role in (pb.ROLE_SYSTEM, pb.ROLE_DEVELOPER):
            text = _part_text(message)
            if text:
                system.append(text)
            continue
        if message.role == pb.ROLE_TOOL:
            result: JSON = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            text = _part_text(message)
            if text:
                result["content"] = text
            role, blocks = "user", [result]
        elif message.role == pb.ROLE_ASSISTANT:
            role, blocks = "assistant", _content_blocks(message, param)
            blocks += [_tool_use_block(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(message.tool_calls)]
        else:  # user, and the legacy function role, whose result is plain text
            role, blocks = "user", _content_blocks(message, param)
        if not blocks:
            continue  # Anthropic refuses empty content; an empty turn says nothing anyway
        if turns and turns[-1]["role"] == role:
            # Roles must alternate: consecutive turns of one role become one (tool results merge here).
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open a user turn, before any text the user adds.
        turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    return "\n\n".join(system), turns


def _tool_choice(request: pb.ChatRequest) -> JSON | None:
    choice: Any = fields.loads(request.tool_choice_json) if request.tool_choice_json else None
    out: JSON
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequestError(
            '\'tool_choice\' must be none, auto, required or {"type": "function", "function": {"name": ...}}.',
            code="invalid_tool_choice",
            param="tool_choice",
        )
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto
    return out


def _max_tokens(sampling: pb.Sampling, target: Target) -> int:
    return int(
        sampling.max_completion_tokens or sampling.max_tokens or target.model.max_output_tokens or DEFAULT_MAX_TOKENS
    )


def _sampling(sampling: pb.Sampling, target: Target) -> JSON:
    if sampling.HasField("n") and sampling.n > 1:
        raise _unsupported("This provider returns one choice per request; 'n' must be 1.", "n")
    body: JSON = {"max_tokens": _max_tokens(sampling, target)}
    if sampling.HasField("temperature"):
        body["temperature"] = min(max(sampling.temperature, 0.0), 1.0)  # Anthropic's range is 0..1
    if sampling.HasField("top_p"):
        body["top_p"] = sampling.top_p
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if sampling.user:
        body["metadata"] = {"user_id": sampling.user}
    return body


def messages_request(request: pb.ChatRequest, target: Target, *, stream: bool) -> JSON:
    """The Messages API body for a chat request."""
    system, turns = _messages(request)
    body: JSON = {"model": target.deployment.upstream_model, "messages": turns}
    if system:
        body["system"] = system
    body.update(_sampling(request.sampling, target))
    if request.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "input_schema": fields.loads(t.function.parameters_json)
                if t.function.parameters_json
                else {"type": "object", "properties": {}},
            }
            for t in request.tools
        ]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def _prompt_request(request: pb.CompleteRequest, prompt: str, target: Target, *, stream: bool) -> JSON:
    if request.suffix:
        raise _unsupported("'suffix' is not supported by this provider.", "suffix")
    if request.HasField("best_of") and request.best_of > 1:
        raise _unsupported("'best_of' is not supported by this provider.", "best_of")
    body: JSON = {"model": target.deployment.upstream_model, "messages": [{"role": "user", "content": prompt}]}
    body.update(_sampling(request.sampling, target))
    if stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- answers


def _usage(raw: Any) -> pb.Usage:
    raw = raw if isinstance(raw, dict) else {}
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    # OpenAI's prompt_tokens include cached ones; Anthropic's input_tokens do not.
    prompt = int(raw.get("input_tokens") or 0) + cache_read + cache_write
    completion = int(raw.get("output_tokens") or 0)
    return pb.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _finish(stop_reason: Any) -> pb.FinishReason.ValueType:
    return _FINISH.get(stop_reason, pb.FINISH_REASON_STOP) if isinstance(stop_reason, str) else pb.FINISH_REASON_STOP


def _tool_call(block: JSON, index: int) -> pb.ToolCall:
    return pb.ToolCall(
        id=str(block.get("id") or ""),
        type="function",
        index=index,
        function=pb.FunctionCall(
            name=str(block.get("name") or ""), arguments=orjson.dumps(block.get("input") or {}).decode()
        ),
    )


def _answer(body: Any) -> tuple[str, str, pb.Message, pb.FinishReason.ValueType, pb.Usage]:
    """(id, model, message, finish reason, usage) of a Messages API answer."""
    if not isinstance(body, dict):
        raise UpstreamError("provider sent an answer that is not a message", code="upstream_bad_response")
    blocks = [b for b in body.get("content") or () if isinstance(b, dict)]
    message = pb.Message(role=pb.ROLE_ASSISTANT)
    texts = [str(b.get("text") or "") for b in blocks if b.get("type") == "text"]
    calls = [b for b in blocks if b.get("type") == "tool_use"]
    if texts or not calls:
        message.content = "".join(texts)
    message.tool_calls.extend(_tool_call(b, j) for j, b in enumerate(calls))
    return (
        str(body.get("id") or ""),
        str(body.get("model") or ""),
        message,
        _finish(body.get("stop_reason")),
        _usage(body.get("usage")),
    )


@dataclass
class _StreamState:
    """Turns Messages API stream events into OpenAI-shaped chat chunks."""

    provider: str
    id: str = ""
    model: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    usage: JSON = field(default_factory=dict)
    tools: dict[int, int] = field(default_factory=dict)  # content block index -> tool call index
    stopped: bool = False

    def _chunk(
        self, delta: pb.Message | None = None, finish: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED
    ) -> pb.ChatChunk:
        chunk = pb.ChatChunk(id=self.id, created=self.created, model=self.model)
        if delta is not None or finish:
            chunk.choices.append(pb.ChunkChoice(index=0, delta=delta or pb.Message(), finish_reason=finish))
        return chunk

    def on_event(self, event: JSON) -> pb.ChatChunk | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = str(message.get("id") or ""), str(message.get("model") or "")
            self.usage.update(message.get("usage") or {})
            return self._chunk(pb.Message(role=pb.ROLE_ASSISTANT, content=""))
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools[int(event.get("index", 0))] = len(self.tools)
                call = _tool_call({**block, "input": None}, index)
                call.function.arguments = ""
                return self._chunk(pb.Message(tool_calls=[call]))
            if block.get("type") == "text" and block.get("text"):
                return self._chunk(pb.Message(content=str(block["text"])))
            return None
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._chunk(pb.Message(content=str(delta["text"])))
            at = self.tools.get(int(event.get("index", 0)))
            if delta.get("type") == "input_json_delta" and delta.get("partial_json") and at is not None:
                call = pb.ToolCall(index=at, function=pb.FunctionCall(arguments=str(delta["partial_json"])))
                return self._chunk(pb.Message(tool_calls=[call]))
            return None  # thinking and signature deltas, empty fragments
        if kind == "message_delta":
            # message_delta usage counts are cumulative: they replace what message_start said.
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            return self._chunk(finish=_finish(reason)) if reason else None
        if kind == "message_stop":
            self.stopped = True
            chunk = self._chunk()
            chunk.usage.CopyFrom(_usage(self.usage))
            return chunk
        if kind == "error":
            detail = event.get("error")
            detail = detail if isinstance(detail, dict) else {}
            raise UpstreamError(
                f"provider {self.provider} failed mid-stream: {detail.get('message') or detail.get('type') or ''}",
                code="upstream_stream_error",
            )
        return None  # ping, content_block_stop and event types added later


def _completion_chunk(chunk: pb.ChatChunk) -> pb.CompleteResponse | None:
    out = pb.CompleteResponse(id=chunk.id, created=chunk.created, model=chunk.model)
    for choice in chunk.choices:
        if choice.delta.tool_calls:
            continue
        out.choices.append(pb.CompletionChoice(index=0, text=choice.delta.content, finish_reason=choice.finish_reason))
    if chunk.HasField("usage"):
        out.usage.CopyFrom(chunk.usage)
    return out if out.choices or out.HasField("usage") else None


# ---------------------------------------------------------------- the adapter


class AnthropicProvider:
    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _headers(self, target: Target) -> dict[str, str]:
        # Header names are case-insensitive: lower-case them so ours replace, not duplicate, the catalog's.
        headers = {k.lower(): v for k, v in target.provider.headers.items()}
        headers.setdefault("anthropic-version", API_VERSION)
        if target.provider.api_key_env:
            key = self._env.get(target.provider.api_key_env)
            if not key:
                raise UpstreamError(
                    f"provider {target.provider.id} is not configured: set {target.provider.api_key_env}",
                    code="provider_unavailable",
                    http_status=503,
                )
            headers["x-api-key"] = key
        headers["content-type"] = "application/json"
        return headers

    def _url(self, target: Target) -> str:
        return f"{target.provider.base_url.rstrip('/')}/messages"

    async def _post(self, target: Target, body: JSON) -> Any:
        try:
            response = await self._client.post(
                self._url(target), content=orjson.dumps(body), headers=self._headers(target),
                timeout=target.provider.timeout_seconds or 60.0,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        if response.status_code >= 400:
            raise anthropic_error(
                response.status_code, response.content, target.provider.id, response.headers.get("retry-after")
            )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} sent invalid JSON", code="upstream_bad_response"
            ) from exc

    async def _events(self, target: Target, body: JSON) -> AsyncGenerator[JSON, None]:
        """The stream's events, each as soon as its blank line arrives."""
        request = self._client.build_request(
            "POST", self._url(target), content=orjson.dumps(body),
            headers={**self._headers(target), "accept": "text/event-stream"},
            timeout=httpx.Timeout(target.provider.timeout_seconds or 60.0),
        )  # fmt: skip
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        try:
            if response.status_code >= 400:
                raise anthropic_error(
                    response.status_code,
                    await response.aread(),
                    target.provider.id,
                    response.headers.get("retry-after"),
                )
            name, data = "", []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    event = orjson.loads("\n".join(data))
                    if isinstance(event, dict):
                        event.setdefault("type", name)
                        yield event
                    name, data = "", []
                # comments (":") and other fields are ignored, as SSE says
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} broke off the stream", code="upstream_stream_error", http_status=502
            ) from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} sent invalid JSON", code="upstream_bad_response"
            ) from exc
        finally:
            # Closing the response tells the upstream we are gone (the client may have left).
            await response.aclose()

    async def _chunks(self, target: Target, body: JSON) -> AsyncGenerator[pb.ChatChunk, None]:
        state = _StreamState(target.provider.id)
        events = self._events(target, body)
        try:
            async for event in events:
                chunk = state.on_event(event)
                if chunk is not None:
                    yield chunk
                if state.stopped:
                    return
        finally:
            await events.aclose()
        raise UpstreamError(
            f"provider {target.provider.id} ended the stream early", code="upstream_stream_error", http_status=502
        )

    # ------------------------------------------------------------ chat

    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse:
        body = messages_request(request, target, stream=False)
        answer_id, model, message, finish, usage = _answer(await self._post(target, body))
        return pb.ChatResponse(
            id=answer_id, created=int(time.time()), model=model,
            choices=[pb.Choice(index=0, message=message, finish_reason=finish)], usage=usage,
        )  # fmt: skip

    async def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncGenerator[pb.ChatChunk, None]:
        # A generator throughout, so translation errors surface at the first chunk, as the router expects.
        chunks = self._chunks(target, messages_request(request, target, stream=True))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    # ------------------------------------------------------------ legacy completions

    async def _complete_one(
        self, request: pb.CompleteRequest, prompt: str, target: Target
    ) -> tuple[str, str, str, pb.FinishReason.ValueType, pb.Usage]:
        answer_id, model, message, finish, usage = _answer(
            await self._post(target, _prompt_request(request, prompt, target, stream=False))
        )
        text = (prompt if request.echo else "") + message.content
        return answer_id, model, text, finish, usage

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        # One Messages call per prompt, concurrently; usage is their sum.
        answers = await asyncio.gather(*(self._complete_one(request, p, target) for p in request.prompts))
        response = pb.CompleteResponse(
            id=answers[0][0] if answers else "", created=int(time.time()), model=answers[0][1] if answers else ""
        )
        for i, (_, _, text, finish, usage) in enumerate(answers):
            response.choices.append(pb.CompletionChoice(index=i, text=text, finish_reason=finish))
            for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens"):
                setattr(response.usage, name, getattr(response.usage, name) + getattr(usage, name))
        return response

    async def complete_stream(
        self, request: pb.CompleteRequest, target: Target
    ) -> AsyncGenerator[pb.CompleteResponse, None]:
        if len(request.prompts) != 1:
            raise _unsupported("Streaming from this provider takes exactly one prompt.", "prompt")
        chunks = self._chunks(target, _prompt_request(request, request.prompts[0], target, stream=True))
        first = True
        try:
            async for chunk in chunks:
                out = _completion_chunk(chunk)
                if out is None:
                    continue
                if first and request.echo and out.choices:
                    out.choices[0].text = request.prompts[0] + out.choices[0].text
                first = False
                yield out
        finally:
            await chunks.aclose()

    # ------------------------------------------------------------ embeddings

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse:
        raise InvalidRequestError(
            f"The model '{target.model.id}' is served by provider {target.provider.id}, which has no embeddings API.",
            code="model_not_supported",
            param="model",
        )
