"""The adapter for OpenAI's wire protocol, which OpenAI, vLLM, Ollama, Together, Groq, ... speak."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InterlockError, UpstreamError
from services.common.wire.chat import chat_request_to_json, chat_response_from_json, chunk_from_json
from services.common.wire.completions import (
    completion_from_json,
    completion_request_to_json,
)
from services.common.wire.embeddings import embedding_request_to_json, embeddings_from_json
from services.router.providers.base import Target
from services.router.providers.http import (
    api_key,
    open_stream,
    post_json,
    retry_seconds,
    sse_data,
    status_error,
    transport_error,
)

# transport_error moved to http.py with the rest of the plumbing; it stays importable from here.
__all__ = ["OpenAIProvider", "transport_error", "upstream_error"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def upstream_error(status: int, body: bytes, provider: str, retry_after: str | None = None) -> InterlockError:
    """Map an upstream HTTP error to the client-facing error."""
    message = f"provider {provider} answered HTTP {status}"
    code = None
    try:
        detail = orjson.loads(body).get("error") or {}
        if isinstance(detail, dict):
            message = f"{message}: {detail.get('message') or ''}".rstrip(": ")
            code = detail.get("code")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    # An OpenAI-compatible upstream's own error code tells the client more than ours would.
    rejected_code = str(code) if code else "upstream_rejected_request"
    return status_error(status, message, provider, retry_seconds(retry_after), rejected_code=rejected_code)


class OpenAIProvider:
    """OpenAI's wire protocol. Providers that speak it under other URLs or auth
    (Azure OpenAI) override `_url` and `_auth_headers`."""

    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _api_key(self, target: Target) -> str | None:
        """The provider's key from the environment; None when it needs none."""
        return api_key(target, self._env)

    def _url(self, target: Target, path: str) -> str:
        """Where an endpoint (`path`: "/chat/completions", "/completions", "/embeddings") lives."""
        return f"{target.provider.base_url}{path}"

    def _auth_headers(self, target: Target) -> dict[str, str]:
        key = self._api_key(target)
        return {"Authorization": f"Bearer {key}"} if key is not None else {}

    def _headers(self, target: Target) -> dict[str, str]:
        return {**target.provider.headers, **self._auth_headers(target)}

    async def _post(self, target: Target, path: str, body: dict[str, Any]) -> Any:
        return await post_json(
            self._client, target, self._url(target, path), body,
            {**self._headers(target), "Content-Type": "application/json"}, on_error=upstream_error,
        )  # fmt: skip

    async def _stream(
        self, target: Target, path: str, body: dict[str, Any], parse: Callable[[Any], T]
    ) -> AsyncIterator[T]:
        """Each event parsed and passed on as soon as its line arrives: a stream is never buffered."""
        async with open_stream(
            self._client, target, self._url(target, path), body,
            {**self._headers(target), "Content-Type": "application/json", "Accept": "text/event-stream"},
            on_error=upstream_error,
        ) as response:  # fmt: skip
            async for data in sse_data(response):
                if data == "[DONE]":
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and "error" in event and not event.get("choices"):
                    detail = event["error"] if isinstance(event["error"], dict) else {}
                    raise UpstreamError(
                        f"provider {target.provider.id} failed mid-stream: {detail.get('message', '')}",
                        code="upstream_stream_error",
                    )
                yield parse(event)

    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse:
        body = chat_request_to_json(request, target.deployment.upstream_model, stream=False)
        return chat_response_from_json(await self._post(target, "/chat/completions", body))

    def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncIterator[pb.ChatChunk]:
        body = chat_request_to_json(request, target.deployment.upstream_model, stream=True)
        return self._stream(target, "/chat/completions", body, chunk_from_json)

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        body = completion_request_to_json(request, target.deployment.upstream_model, stream=False)
        return completion_from_json(await self._post(target, "/completions", body))

    def complete_stream(self, request: pb.CompleteRequest, target: Target) -> AsyncIterator[pb.CompleteResponse]:
        body = completion_request_to_json(request, target.deployment.upstream_model, stream=True)
        return self._stream(target, "/completions", body, completion_from_json)

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse:
        body = embedding_request_to_json(request, target.deployment.upstream_model)
        return embeddings_from_json(await self._post(target, "/embeddings", body))
