"""OpenAI-compatible providers (OpenAI, vLLM, Ollama, Together, Groq, ...).

Requests and answers go through the shared wire codecs; streams are read
line by line and passed on as each event arrives, never buffered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.common.wire.chat import chat_request_to_json, chat_response_from_json, chunk_from_json
from services.common.wire.completions import (
    completion_from_json,
    completion_request_to_json,
)
from services.common.wire.embeddings import embedding_request_to_json, embeddings_from_json
from services.router.providers.base import Target

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
    retry = None
    if retry_after:
        with contextlib.suppress(ValueError):
            retry = float(retry_after)
    if status in (400, 404, 413, 422):
        # The request itself was refused: the client's to fix, not ours to retry.
        return InvalidRequestError(message, code=str(code) if code else "upstream_rejected_request")
    if status == 429:
        return UpstreamError(message, code="upstream_rate_limited", http_status=503, retry_after=retry)
    if status in (401, 403):
        return UpstreamError(
            f"provider {provider} refused the gateway's credentials", code="provider_auth_failed", http_status=502
        )
    return UpstreamError(message, code="upstream_error", http_status=502, retry_after=retry)


def transport_error(exc: httpx.HTTPError, provider: str) -> UpstreamError:
    """A request that got no HTTP answer: a timeout is a 504, anything else a 503."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"provider {provider} timed out", code="provider_timeout", http_status=504)
    return UpstreamError(f"provider {provider} is unreachable", code="provider_unavailable", http_status=503)


class OpenAIProvider:
    """OpenAI's wire protocol. Providers that speak it under other URLs or auth
    (Azure OpenAI) override `_url` and `_auth_headers`."""

    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _api_key(self, target: Target) -> str | None:
        """The provider's key from the environment; None when it needs none."""
        if not target.provider.api_key_env:
            return None
        key = self._env.get(target.provider.api_key_env)
        if not key:
            raise UpstreamError(
                f"provider {target.provider.id} is not configured: set {target.provider.api_key_env}",
                code="provider_unavailable",
                http_status=503,
            )
        return key

    def _url(self, target: Target, path: str) -> str:
        """Where an endpoint (`path`: "/chat/completions", "/completions", "/embeddings") lives."""
        return f"{target.provider.base_url}{path}"

    def _auth_headers(self, target: Target) -> dict[str, str]:
        key = self._api_key(target)
        return {"Authorization": f"Bearer {key}"} if key is not None else {}

    def _headers(self, target: Target) -> dict[str, str]:
        return {**target.provider.headers, **self._auth_headers(target)}

    async def _post(self, target: Target, path: str, body: dict[str, Any]) -> Any:
        url = self._url(target, path)
        try:
            response = await self._client.post(
                url, content=orjson.dumps(body), headers={**self._headers(target), "Content-Type": "application/json"},
                timeout=target.provider.timeout_seconds or 60.0,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        if response.status_code >= 400:
            raise upstream_error(
                response.status_code, response.content, target.provider.id, response.headers.get("retry-after")
            )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {target.provider.id} sent invalid JSON", code="upstream_bad_response"
            ) from exc

    async def _stream(
        self, target: Target, path: str, body: dict[str, Any], parse: Callable[[Any], T]
    ) -> AsyncIterator[T]:
        url = self._url(target, path)
        request = self._client.build_request(
            "POST", url, content=orjson.dumps(body),
            headers={**self._headers(target), "Content-Type": "application/json", "Accept": "text/event-stream"},
            timeout=httpx.Timeout(target.provider.timeout_seconds or 60.0),
        )  # fmt: skip
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        try:
            if response.status_code >= 400:
                raise upstream_error(
                    response.status_code,
                    await response.aread(),
                    target.provider.id,
                    response.headers.get("retry-after"),
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
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
