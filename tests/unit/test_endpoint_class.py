"""Which endpoint class a path's requests count against (services/ratelimit/policy.py)."""

from __future__ import annotations

import pytest

from services.ratelimit.policy import endpoint_class


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/models/x", "models"),
        # Anthropic's Messages API shares chat's quotas; counting tokens has its own class.
        ("/v1/messages", "chat"),
        ("/v1/messages/count_tokens", "count_tokens"),
        # Seed 002's execute and agent runs call chat models.
        ("/api/v2/execute", "chat"),
        ("/v2/agents/run", "chat"),
        ("/", "default"),
    ],
)
def test_endpoint_class(path: str, cls: str) -> None:
    assert endpoint_class(path) == cls
