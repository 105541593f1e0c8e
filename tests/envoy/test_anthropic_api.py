"""The Anthropic Messages API through Envoy with the official anthropic SDK: answers,
an unbuffered event stream, and errors in Anthropic's shape with Envoy's request id."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import pytest

from tests.envoy.helpers import verify_for
from tests.support.fronted import FrontedStack

pytestmark = pytest.mark.e2e


@pytest.fixture
def claude(fronted: FrontedStack) -> Iterator[anthropic.Anthropic]:
    # This SDK brings its own HTTP client (httpx2); the CA goes to it the same way.
    http = anthropic.DefaultHttpxClient(verify=verify_for(fronted), timeout=30)
    with anthropic.Anthropic(base_url=fronted.url, api_key=fronted.api_key, max_retries=0, http_client=http) as c:
        yield c


def test_a_message(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(
        model="demo-chat", max_tokens=64, messages=[{"role": "user", "content": "hello through envoy"}]
    )
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.content[0].type == "text" and "hello through envoy" in reply.content[0].text
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0


def test_a_stream_arrives_as_it_is_made(claude: anthropic.Anthropic) -> None:
    started = time.monotonic()
    kinds: list[str] = []
    arrivals: list[float] = []
    with claude.messages.stream(
        model="demo-chat", max_tokens=256, messages=[{"role": "user", "content": "tell me something long"}]
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            arrivals.append(time.monotonic() - started)
    ended = time.monotonic() - started
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    # The demo provider waits between tokens: a buffering proxy would hand everything over at the end.
    assert arrivals[0] < ended - 0.2, (arrivals[0], ended)


def test_errors_are_anthropics(fronted: FrontedStack, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["request_id"] == missing.value.response.headers["x-request-id"]
    with pytest.raises(anthropic.AuthenticationError):
        claude.with_options(api_key="il-not-a-key").messages.create(
            model="demo-chat", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
