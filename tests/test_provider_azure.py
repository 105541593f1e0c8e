"""The `azure` provider kind over real HTTP, against a fake that serves Azure OpenAI's URLs and auth.

The fake is the OpenAI fake behind Azure's front door: it checks the deployment in the path,
the `api-version` query and the `api-key` header the way Azure does, then answers the request
as the OpenAI fake would (same JSON and SSE shapes, since Azure speaks OpenAI's wire format).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from starlette.responses import Response

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import UpstreamError
from services.router.providers.azure import AzureOpenAIProvider
from services.router.providers.base import Target
from services.router.providers.registry import build_adapters
from tests.support.fake_openai import FakeOpenAI

API_VERSION = "2024-10-21"
KEY = "azure-test-key"
DEPLOYMENT = "gpt-4o-prod"
KEY_ENV = "AZURE_TEST_KEY"
_PATH = re.compile(r"/openai/deployments/([^/]+)(/chat/completions|/completions|/embeddings)")
HI = [pb.Message(role=pb.ROLE_USER, content="hi there")]


def _azure_error(status: int, code: str, message: str) -> Response:
    return Response(orjson.dumps({"error": {"code": code, "message": message}}), status, media_type="application/json")


class FakeAzure(FakeOpenAI):
    """Azure OpenAI's URL scheme and key check in front of the OpenAI fake."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []  # what reached Azure's front door: path, query, headers

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope["query_string"].decode("latin-1"))
        self.seen.append({"method": scope["method"], "path": scope["path"], "query": query, "headers": headers})
        match = _PATH.fullmatch(scope["path"])
        if headers.get("api-key") != KEY:
            response = _azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        elif query.get("api-version") != [API_VERSION]:
            response = _azure_error(404, "404", "Resource not found")
        elif match is None or match[1] != DEPLOYMENT:
            response = _azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        else:
            await super().__call__({**scope, "path": "/v1" + match[2], "query_string": b""}, receive, send)
            return
        await response(scope, receive, send)


@pytest.fixture(scope="module")
def azure_server() -> Iterator[FakeAzure]:
    with FakeAzure() as fake:
        yield fake


@pytest.fixture
def azure(azure_server: FakeAzure) -> Iterator[FakeAzure]:
    azure_server.reset()
    azure_server.seen.clear()
    yield azure_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def target(fake: FakeAzure, *, base_url: str | None = None, api_version: str = API_VERSION) -> Target:
    provider = cpb.Provider(
        id="azure-east", kind=cpb.PROVIDER_KIND_AZURE, base_url=base_url or fake.endpoint, api_key_env=KEY_ENV,
        headers={"x-ms-client-request-id": "trace-1"}, timeout_seconds=10, available=True, api_version=api_version,
    )  # fmt: skip
    deployment = cpb.Deployment(provider="azure-east", upstream_model=DEPLOYMENT)
    model = cpb.Model(id="gpt-4o", type=cpb.MODEL_TYPE_CHAT, provider="azure-east", deployments=[deployment])
    return Target(model=model, deployment=deployment, provider=provider)


def adapter(client: httpx.AsyncClient, key: str = KEY) -> AzureOpenAIProvider:
    return AzureOpenAIProvider(client, {KEY_ENV: key})


def assert_azure_request(seen: dict[str, Any], path: str) -> None:
    assert seen["method"] == "POST"
    assert seen["path"] == f"/openai/deployments/{DEPLOYMENT}{path}"
    assert seen["query"] == {"api-version": [API_VERSION]}
    assert seen["headers"]["api-key"] == KEY
    assert "authorization" not in seen["headers"]  # Azure keys never travel as a bearer token
    assert seen["headers"]["x-ms-client-request-id"] == "trace-1"  # the provider's own headers still go


async def test_chat_non_stream(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    response = await adapter(client).chat(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure))
    assert response.choices[0].message.content == "Echo: hi there"
    assert response.usage.completion_tokens == 3
    assert_azure_request(azure.seen[-1], "/chat/completions")
    assert azure.requests[-1]["json"]["messages"] == [{"role": "user", "content": "hi there"}]


async def test_chat_stream(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    stream = adapter(client).chat_stream(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure))
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Echo: hi there"
    assert chunks[-1].usage.completion_tokens == 3  # the adapter asks for usage on streams
    assert_azure_request(azure.seen[-1], "/chat/completions")
    assert azure.seen[-1]["headers"]["accept"] == "text/event-stream"
    assert azure.requests[-1]["json"]["stream"] is True


async def test_completions(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    provider = adapter(client)
    done = await provider.complete(pb.CompleteRequest(model="gpt-4o", prompts=["say hi"]), target(azure))
    assert done.choices[0].text == "Echo: say hi"
    assert_azure_request(azure.seen[-1], "/completions")
    stream = provider.complete_stream(pb.CompleteRequest(model="gpt-4o", prompts=["say hi"]), target(azure))
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Echo: say hi"
    assert_azure_request(azure.seen[-1], "/completions")


async def test_embeddings(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    request = pb.EmbedRequest(model="gpt-4o", inputs=["a", "b"], dimensions=8)
    response = await adapter(client).embed(request, target(azure))
    assert [(e.index, len(e.values)) for e in response.embeddings] == [(0, 8), (1, 8)]
    assert_azure_request(azure.seen[-1], "/embeddings")


async def test_trailing_slash_in_base_url(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    await adapter(client).chat(
        pb.ChatRequest(model="gpt-4o", messages=HI), target(azure, base_url=azure.endpoint + "/")
    )
    assert_azure_request(azure.seen[-1], "/chat/completions")


async def test_wrong_key_is_provider_auth_failed(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    with pytest.raises(UpstreamError) as caught:
        await adapter(client, key="wrong").chat(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure))
    assert caught.value.code == "provider_auth_failed" and caught.value.http_status == 502
    assert azure.seen[-1]["headers"]["api-key"] == "wrong"
    with pytest.raises(UpstreamError) as streamed:
        stream = adapter(client, key="wrong").chat_stream(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure))
        [chunk async for chunk in stream]
    assert streamed.value.code == "provider_auth_failed"


async def test_missing_key_or_api_version_fails_before_any_request(client: httpx.AsyncClient, azure: FakeAzure) -> None:
    unkeyed = AzureOpenAIProvider(client, {})
    with pytest.raises(UpstreamError) as no_key:
        await unkeyed.chat(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure))
    assert no_key.value.code == "provider_unavailable" and KEY_ENV in no_key.value.message
    with pytest.raises(UpstreamError) as no_version:
        await adapter(client).chat(pb.ChatRequest(model="gpt-4o", messages=HI), target(azure, api_version=""))
    assert no_version.value.code == "provider_unavailable" and "api_version" in no_version.value.message
    assert azure.seen == []


async def test_registry_serves_azure_kind(client: httpx.AsyncClient) -> None:
    assert isinstance(build_adapters(client, {}, 0.0)[cpb.PROVIDER_KIND_AZURE], AzureOpenAIProvider)
