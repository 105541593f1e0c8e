"""The fake Anthropic server and the adapter under test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.router.providers.anthropic import AnthropicProvider
from tests.provider_anthropic.helpers import KEY, KEY_ENV
from tests.support.fake_anthropic import FakeAnthropic


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeAnthropic) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
async def provider() -> AsyncIterator[AnthropicProvider]:
    async with httpx.AsyncClient() as client:
        yield AnthropicProvider(client, {KEY_ENV: KEY})
