"""The fake Gemini server and the adapter under test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.router.providers.gemini import (
    GeminiProvider,
)
from tests.provider_gemini.helpers import (
    KEY,
    KEY_ENV,
)
from tests.support.fake_gemini import FakeGemini


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(required_api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeGemini) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
async def provider() -> AsyncIterator[GeminiProvider]:
    async with httpx.AsyncClient() as client:
        yield GeminiProvider(client, {KEY_ENV: KEY})
