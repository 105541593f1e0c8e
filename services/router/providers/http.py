"""Calling a provider over HTTP: its key, JSON and streaming POSTs, and the errors they end in."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import httpx
import orjson

from services.common.errors import InterlockError, InvalidRequestError, UpstreamError
from services.router.providers.base import Target
from services.router.providers.pool import ProviderClient

# (status, body, provider id, Retry-After) -> the client-facing error. Each provider brings its own:
# each words its error bodies, and uses its statuses, differently.
ErrorMapper = Callable[[int, bytes, str, str | None], InterlockError]


def api_key(target: Target, env: Mapping[str, str]) -> str | None:
    """The provider's key from the environment; None when it needs none."""
    if not target.provider.api_key_env:
        return None
    key = env.get(target.provider.api_key_env)
    if not key:
        raise UpstreamError(
            f"provider {target.provider.id} is not configured: set {target.provider.api_key_env}",
            code="provider_unavailable",
            http_status=503,
        )
    return key


def transport_error(exc: httpx.HTTPError, provider: str) -> UpstreamError:
    """A request that got no HTTP answer: a timeout is a 504, anything else a 503."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"provider {provider} timed out", code="provider_timeout", http_status=504)
    return UpstreamError(f"provider {provider} is unreachable", code="provider_unavailable", http_status=503)


def retry_seconds(retry_after: str | None) -> float | None:
    """A Retry-After header's delay in seconds; None when absent or not a number."""
    if retry_after:
        with contextlib.suppress(ValueError):
            return float(retry_after)
    return None


def credentials_refused(provider: str) -> UpstreamError:
    return UpstreamError(
        f"provider {provider} refused the gateway's credentials", code="provider_auth_failed", http_status=502
    )


def status_error(
    status: int,
    message: str,
    provider: str,
    retry: float | None,
    *,
    rejected_code: str = "upstream_rejected_request",
) -> InterlockError:
    """The client-facing error for an HTTP error status, once a provider has mapped its own special cases."""
    if status in (400, 404, 413, 422):
        # The request itself was refused: the client's to fix, not ours to retry.
        return InvalidRequestError(message, code=rejected_code)
    if status == 429:
        return UpstreamError(message, code="upstream_rate_limited", http_status=503, retry_after=retry)
    if status in (401, 403):
        return credentials_refused(provider)
    return UpstreamError(message, code="upstream_error", http_status=502, retry_after=retry)


def _invalid_json(provider: str) -> UpstreamError:
    return UpstreamError(f"provider {provider} sent invalid JSON", code="upstream_bad_response")


async def post_json(
    client: httpx.AsyncClient,
    target: Target,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    *,
    on_error: ErrorMapper,
) -> Any:
    """POST `body` as JSON and return the decoded answer; `headers` are all the request sends."""
    timeout = target.provider.timeout_seconds or 60.0
    if isinstance(client, ProviderClient) and client.pooled is not None:
        try:
            raw = await client.pooled.post(
                url,
                {**client.default_headers, **{k.lower(): v for k, v in headers.items()}},
                orjson.dumps(body),
                timeout,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, target.provider.id) from exc
        if raw.status >= 400:
            raise on_error(raw.status, raw.content, target.provider.id, raw.header(b"retry-after"))
        return _decoded_json(raw.content, target)
    try:
        response = await client.post(url, content=orjson.dumps(body), headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise transport_error(exc, target.provider.id) from exc
    if response.status_code >= 400:
        raise on_error(response.status_code, response.content, target.provider.id, response.headers.get("retry-after"))
    return _decoded_json(response.content, target)


def _decoded_json(content: bytes, target: Target) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise _invalid_json(target.provider.id) from exc


class Lines(Protocol):
    """A streamed answer as open_stream hands it to the block: httpx's Response, or the
    pooled transport's RawStream, which reads the same lines with less in between."""

    def aiter_lines(self) -> AsyncIterator[str]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    target: Target,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    *,
    on_error: ErrorMapper,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[Lines]:
    """A streaming POST of `body` as JSON whose answer is a success, for the block to read.

    A context manager rather than an iterator so that what the block does while reading gets the
    same treatment as the transport: a lost connection becomes an upstream stream error, JSON it
    fails to decode a bad response, and the response is closed however the block ends.
    """
    response: Lines
    try:
        if isinstance(client, ProviderClient) and client.pooled is not None:
            if params:
                url = str(httpx.URL(url, params=params))
            # Straight on the pooled connections, uncompressed: a stream's chunks are small and
            # each one is on the way to a client waiting for it.
            sent = {**client.default_headers, **{k.lower(): v for k, v in headers.items()}}
            sent["accept-encoding"] = "identity"
            raw = await client.pooled.stream(url, sent, orjson.dumps(body), target.provider.timeout_seconds or 60.0)
            status, retry_after, response = raw.status, raw.header(b"retry-after"), raw
        else:
            request = client.build_request(
                "POST", url, params=params, content=orjson.dumps(body), headers=headers,
                timeout=httpx.Timeout(target.provider.timeout_seconds or 60.0),
            )  # fmt: skip
            sent_httpx = await client.send(request, stream=True)
            status, retry_after, response = sent_httpx.status_code, sent_httpx.headers.get("retry-after"), sent_httpx
    except httpx.HTTPError as exc:
        raise transport_error(exc, target.provider.id) from exc
    try:
        if status >= 400:
            raise on_error(status, await response.aread(), target.provider.id, retry_after)
        yield response
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"provider {target.provider.id} broke off the stream", code="upstream_stream_error", http_status=502
        ) from exc
    except orjson.JSONDecodeError as exc:
        raise _invalid_json(target.provider.id) from exc
    finally:
        # Closing the response tells the upstream we are gone (the client may have left).
        await response.aclose()


async def sse_data(response: Lines) -> AsyncIterator[str]:
    """The payload of each server-sent `data:` line, as soon as the line arrives."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):  # the rest is comments, event names, blank separators, keep-alives
            yield line[5:].strip()
