"""Which adapter serves which provider kind: the one place adapters are wired."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from interlock.catalog.v1 import catalog_pb2 as cpb
from services.router.providers.anthropic import AnthropicProvider
from services.router.providers.azure import AzureOpenAIProvider
from services.router.providers.base import ProviderAdapter
from services.router.providers.demo import DemoProvider
from services.router.providers.gemini import GeminiProvider
from services.router.providers.openai import OpenAIProvider


def build_adapters(
    client: httpx.AsyncClient, env: Mapping[str, str], demo_token_delay: float
) -> dict[int, ProviderAdapter]:
    """One adapter per provider kind, sharing the pooled HTTP client."""
    return {
        cpb.PROVIDER_KIND_DEMO: DemoProvider(demo_token_delay),
        cpb.PROVIDER_KIND_OPENAI: OpenAIProvider(client, env),
        cpb.PROVIDER_KIND_GEMINI: GeminiProvider(client, env),
        cpb.PROVIDER_KIND_ANTHROPIC: AnthropicProvider(client, env),
        cpb.PROVIDER_KIND_AZURE: AzureOpenAIProvider(client, env),
    }
