"""The adapter for Google's Gemini API (generativelanguage v1beta): its HTTP calls and errors."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any

import httpx
import orjson

from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.router.providers.base import Target
from services.router.providers.gemini_schema import clean_schema
from services.router.providers.gemini_wire import (
    JSON,
    THOUGHT_SEPARATOR,
    ChatStreamTranslator,
    build_contents,
    build_generate_request,
    chat_response_from_gemini,
    prompt_request,
    sum_usage,
    usage_from_gemini,
)
from services.router.providers.http import (
    api_key,
    credentials_refused,
    open_stream,
    post_json,
    retry_seconds,
    sse_data,
    status_error,
)

# The translation moved to gemini_wire.py and gemini_schema.py; what callers imported from here still imports.
__all__ = [
    "THOUGHT_SEPARATOR",
    "GeminiProvider",
    "build_contents",
    "build_generate_request",
    "clean_schema",
    "gemini_error",
]

# The API takes at most this many requests in one batchEmbedContents call.
EMBED_BATCH = 100


def _retry_seconds(header: str | None, details: Iterable[Any]) -> float | None:
    """Retry-After header, else a google.rpc.RetryInfo detail ("37s")."""
    seconds = retry_seconds(header)
    if seconds is not None:
        return seconds
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                with contextlib.suppress(ValueError):
                    return float(delay[:-1])
    return None


def gemini_error(status: int, body: bytes, provider: str, retry_after: str | None = None) -> InterlockError:
    """Map a Gemini HTTP error (a google.rpc.Status body) to the client-facing error."""
    detail: JSON = {}
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        if isinstance(parsed, list) and parsed:  # the non-SSE stream wraps errors in an array
            parsed = parsed[0]
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = parsed["error"]
    text = detail.get("message") if isinstance(detail.get("message"), str) else ""
    message = f"provider {provider} answered HTTP {status}" + (f": {text}" if text else "")
    raw_details = detail.get("details")
    details: list[Any] = raw_details if isinstance(raw_details, list) else []
    reasons = {str(d.get("reason", "")) for d in details if isinstance(d, dict)}
    retry = _retry_seconds(retry_after, details)
    if any(r.startswith("API_KEY_") for r in reasons):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID: not the client's fault.
        return credentials_refused(provider)
    if status == 503:
        return UpstreamError(message, code="upstream_overloaded", http_status=503, retry_after=retry)
    if status == 400 and detail.get("status") == "FAILED_PRECONDITION":
        # Region not served, billing not enabled: the provider cannot serve us, another one may.
        return UpstreamError(message, code="upstream_error", http_status=502)
    return status_error(status, message, provider, retry)


# ---------------------------------------------------------------- the adapter


class GeminiProvider:
    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    def _headers(self, target: Target) -> dict[str, str]:
        headers = dict(target.provider.headers)
        # Gemini takes the key in a header of its own, not Authorization.
        key = api_key(target, self._env)
        if key is not None:
            headers["x-goog-api-key"] = key
        headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def _model(target: Target) -> str:
        """The model's resource name: models/<id> unless the catalog gave a full name (tunedModels/...)."""
        model = target.deployment.upstream_model
        return model if "/" in model else f"models/{model}"

    def _url(self, target: Target, method: str) -> str:
        return f"{target.provider.base_url}/{self._model(target)}:{method}"

    async def _post(self, target: Target, method: str, body: JSON) -> JSON:
        answer = await post_json(
            self._client, target, self._url(target, method), body, self._headers(target), on_error=gemini_error
        )
        if not isinstance(answer, dict):
            raise UpstreamError(
                f"provider {target.provider.id} sent an unexpected answer", code="upstream_bad_response"
            )
        return answer

    async def _events(self, target: Target, body: JSON) -> AsyncGenerator[JSON, None]:
        """Each streamed GenerateContentResponse, as soon as its SSE line arrives.

        With `alt=sse` every `data:` line is one whole GenerateContentResponse; without it the
        API streams a single JSON array, which would need an incremental JSON parser.
        """
        async with open_stream(
            self._client, target, self._url(target, "streamGenerateContent"), body,
            {**self._headers(target), "Accept": "text/event-stream"}, on_error=gemini_error, params={"alt": "sse"},
        ) as response:  # fmt: skip
            async for data in sse_data(response):
                event = orjson.loads(data)
                if not isinstance(event, dict):
                    continue
                if isinstance(event.get("error"), dict):
                    raise UpstreamError(
                        f"provider {target.provider.id} failed mid-stream: {event['error'].get('message', '')}",
                        code="upstream_stream_error",
                    )
                yield event

    # ------------------------------------------------------------ chat

    async def chat(self, request: pb.ChatRequest, target: Target) -> pb.ChatResponse:
        body = build_generate_request(request)
        answer = await self._post(target, "generateContent", body)
        return chat_response_from_gemini(answer, target.deployment.upstream_model)

    async def chat_stream(self, request: pb.ChatRequest, target: Target) -> AsyncIterator[pb.ChatChunk]:
        body = build_generate_request(request)
        translator = ChatStreamTranslator(target.deployment.upstream_model)
        async with contextlib.aclosing(self._events(target, body)) as events:
            async for event in events:
                for chunk in translator.feed(event):
                    yield chunk
        last = translator.usage_chunk()
        if last is not None:
            yield last

    # ------------------------------------------------------------ legacy completions

    async def complete(self, request: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        """Each prompt is one user turn; choices are numbered prompt by prompt, n per prompt."""
        response = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model
        )
        n = request.sampling.n if request.sampling.HasField("n") else 1
        usages = []
        for p_index, prompt in enumerate(request.prompts):
            chat = await self.chat(prompt_request(request, prompt), target)
            response.model = chat.model
            usages.append(chat.usage)
            for choice in chat.choices:
                text = (prompt if request.echo else "") + choice.message.content
                response.choices.append(
                    pb.CompletionChoice(index=p_index * n + choice.index, text=text, finish_reason=choice.finish_reason)
                )
        response.usage.CopyFrom(sum_usage(usages))
        return response

    async def complete_stream(self, request: pb.CompleteRequest, target: Target) -> AsyncIterator[pb.CompleteResponse]:
        n = request.sampling.n if request.sampling.HasField("n") else 1
        head = pb.CompleteResponse(
            id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=target.deployment.upstream_model
        )
        usages = []
        for p_index, prompt in enumerate(request.prompts):
            translator = ChatStreamTranslator(target.deployment.upstream_model)
            body = build_generate_request(prompt_request(request, prompt))
            async with contextlib.aclosing(self._events(target, body)) as events:
                async for event in events:
                    out = pb.CompleteResponse()
                    out.CopyFrom(head)
                    for chunk in translator.feed(event):
                        out.model = chunk.model
                        for choice in chunk.choices:
                            text = choice.delta.content
                            if request.echo and choice.delta.role:  # a choice's first delta
                                text = prompt + text
                            if text or choice.finish_reason:
                                out.choices.append(
                                    pb.CompletionChoice(
                                        index=p_index * n + choice.index, text=text, finish_reason=choice.finish_reason
                                    )
                                )
                    if out.choices:
                        yield out
            if isinstance(translator.usage, dict):
                usages.append(usage_from_gemini(translator.usage))
        last = pb.CompleteResponse()
        last.CopyFrom(head)
        if usages:
            last.usage.CopyFrom(sum_usage(usages))
            yield last

    # ------------------------------------------------------------ embeddings

    async def embed(self, request: pb.EmbedRequest, target: Target) -> pb.EmbedResponse:
        """batchEmbedContents, 100 inputs per call. Gemini reports no token counts for
        embeddings, so prompt tokens are estimated with the router's tokenizer, input by input."""
        if request.token_inputs:
            raise InvalidRequestError("Gemini embeds text only: send strings, not token ids", param="input")
        model = self._model(target)
        texts = list(request.inputs)
        response = pb.EmbedResponse(model=target.deployment.upstream_model)
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            requests = []
            for text in batch:
                item: JSON = {"model": model, "content": {"parts": [{"text": text}]}}
                if request.dimensions:
                    item["outputDimensionality"] = request.dimensions
                requests.append(item)
            answer = await self._post(target, "batchEmbedContents", {"requests": requests})
            vectors = answer.get("embeddings")
            if not isinstance(vectors, list) or len(vectors) != len(batch):
                raise UpstreamError(
                    f"provider {target.provider.id} answered a different number of embeddings",
                    code="upstream_bad_response",
                )
            for j, vector in enumerate(vectors):
                values = vector.get("values") if isinstance(vector, dict) else None
                response.embeddings.append(pb.Embedding(index=start + j, values=values or []))
        prompt = sum(tokens.count_text(text) for text in texts)
        response.usage.CopyFrom(pb.Usage(prompt_tokens=prompt, total_tokens=prompt))
        return response
