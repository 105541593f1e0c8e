"""The adapter for Anthropic's Messages API (POST {base_url}/messages): its HTTP calls and errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.router.providers.anthropic_wire import (
    JSON,
    StreamState,
    completion_chunk,
    messages_request,
    prompt_request,
    read_answer,
    unsupported,
)
from services.router.providers.base import Target
from services.router.providers.http import api_key, open_stream, post_json, retry_seconds, status_error

# messages_request moved to anthropic_wire.py with the rest of the translation; it stays importable from here.
__all__ = ["API_VERSION", "AnthropicProvider", "anthropic_error", "messages_request"]

API_VERSION = "2023-06-01"


def anthropic_error(status: int, body: bytes, provider: str, retry_after: str | None = None) -> InterlockError:
    """Map an Anthropic error answer ({"type": "error", "error": {"type", "message"}})."""
    message = f"provider {provider} answered HTTP {status}"
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        detail = orjson.loads(body).get("error")
        if isinstance(detail, dict) and detail.get("message"):
            message = f"{message}: {detail['message']}"
    retry = retry_seconds(retry_after)
    if status == 529:  # Anthropic's own status for "overloaded"
        return UpstreamError(message, code="upstream_overloaded", http_status=503, retry_after=retry)
    return status_error(status, message, provider, retry)


# ---------------------------------------------------------------- the adapter


class AnthropicProvider:
    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _headers(self, target: Target) -> dict[str, str]:
        # Header names are case-insensitive: lower-case them so ours replace, not duplicate, the catalog's.
        headers = {k.lower(): v for k, v in target.provider.headers.items()}
        headers.setdefault("anthropic-version", API_VERSION)
        key = api_key(target, self._env)
        if key is not None:
            headers["x-api-key"] = key
        headers["content-type"] = "application/json"
        return headers

    def _url(self, target: Target) -> str:
        return f"{target.provider.base_url.rstrip('/')}/messages"

    async def _post(self, target: Target, body: JSON) -> Any:
        return await post_json(
            self._client, target, self._url(target), body, self._headers(target), on_error=anthropic_error
        )

    async def _events(self, target: Target, body: JSON) -> AsyncGenerator[JSON, None]:
        """The stream's events, each as soon as its blank line arrives.

        Anthropic names each event on an `event:` line and may spread its data over several
        `data:` lines up to a blank one, so whole lines are read here rather than `sse_data`'s payloads.
        """
        async with open_stream(
            self._client, target, self._url(target), body,
            {**self._headers(target), "accept": "text/event-stream"}, on_error=anthropic_error,
        ) as response:  # fmt: skip
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

    async def _chunks(self, target: Target, body: JSON) -> AsyncGenerator[pb.ChatChunk, None]:
        state = StreamState(target.provider.id)
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
        answer_id, model, message, finish, usage = read_answer(await self._post(target, body))
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
        answer_id, model, message, finish, usage = read_answer(
            await self._post(target, prompt_request(request, prompt, target, stream=False))
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
            raise unsupported("Streaming from this provider takes exactly one prompt.", "prompt")
        chunks = self._chunks(target, prompt_request(request, request.prompts[0], target, stream=True))
        first = True
        try:
            async for chunk in chunks:
                out = completion_chunk(chunk)
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
