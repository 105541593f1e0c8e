"""Constants and request builders shared by the Gemini adapter tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.router.providers.base import Target
from tests.support.fake_gemini import FakeGemini

KEY = "gemini-test-key"


KEY_ENV = "TEST_GEMINI_KEY"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


PARAMETERS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "q": {"type": "string", "maxLength": 5, "format": "email"},
        "opts": {
            "type": "object",
            "properties": {"deep": {"type": ["boolean", "null"]}},
            "additionalProperties": False,
        },
    },
    "required": ["q"],
    "additionalProperties": False,
    "strict": True,
}


CLEAN_PARAMETERS = {
    "type": "object",
    "properties": {
        "q": {"type": "string", "maxLength": 5},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean", "nullable": True}}},
    },
    "required": ["q"],
}


TOOLS = [
    pb.Tool(
        type="function",
        function=pb.FunctionDefinition(
            name="lookup", description="Look a word up.", parameters_json=json.dumps(PARAMETERS), strict=True
        ),
    ),
    pb.Tool(type="function", function=pb.FunctionDefinition(name="now", parameters_json='{"type":"object"}')),
]


def target(
    base_url: str, *, upstream: str = "gemini-up", headers: dict[str, str] | None = None, key_env: str = KEY_ENV
) -> Target:
    provider = cpb.Provider(
        id="gemini", kind=cpb.PROVIDER_KIND_GEMINI, base_url=base_url, api_key_env=key_env,
        headers=headers or {}, timeout_seconds=10, available=True,
    )  # fmt: skip
    model = cpb.Model(id="gemini-test", type=cpb.MODEL_TYPE_CHAT, provider="gemini")
    deployment = cpb.Deployment(provider="gemini", upstream_model=upstream)
    model.deployments.append(deployment)
    return Target(model=model, deployment=deployment, provider=provider)


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


def chat(*messages: pb.Message, **kwargs: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model="gemini-test", messages=messages, **kwargs)


def sent(fake: FakeGemini) -> dict[str, Any]:
    body = fake.requests[-1]["json"]
    assert isinstance(body, dict)
    return body


async def collect(stream: AsyncIterator[pb.ChatChunk]) -> list[pb.ChatChunk]:
    return [chunk async for chunk in stream]
