"""Seed 002's agents API end to end, on real processes: a catalog agent holds a
conversation through its sessionId (kept by the gateway, across a restart of the
whole stack), takes a client's own history instead, and calls another catalog
model as a tool, feeding its answer back to the model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import UPSTREAM_KEY, catalog_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import create_key
from tests.support.stack import Stack, start_stack, stop_stack

INSTRUCTIONS = "You are terse."


@pytest.fixture(scope="module")
def agent_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
def fake(agent_fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    agent_fake.reset()
    yield agent_fake
    agent_fake.reset()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, agent_fake: FakeOpenAI) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("agents")
    catalog = catalog_for(agent_fake)
    catalog["agents"] = [
        {"id": "helper", "model": "fake-chat", "instructions": INSTRUCTIONS, "tools": ["fakeb-chat"]},
    ]
    config = root / "catalog.yaml"
    config.write_text(yaml.safe_dump(catalog))
    return config, root / "data"


def start(setup: tuple[Path, Path], api_key: str | None = None) -> Stack:
    config, data = setup
    return start_stack(data, config=config, env={"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}, api_key=api_key)


@pytest.fixture(scope="module")
def agents_stack(setup: tuple[Path, Path]) -> Iterator[Stack]:
    running = start(setup)
    yield running
    assert stop_stack(running) == 0, running.logs()


def run(stack: Stack, body: dict[str, Any], key: str | None = None, agent: str = "helper") -> httpx.Response:
    headers = {"x-api-key": key or stack.api_key}
    return httpx.post(f"{stack.url}/v2/agents/{agent}/run", json=body, headers=headers, timeout=30)


def turn(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    """Run a turn and poll its result until done."""
    reply = run(stack, body)
    assert reply.status_code == 200, reply.text
    started = reply.json()
    assert started["data"] == f"{stack.url}/sdk/agents/{started['requestId']}/result"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = httpx.get(started["data"], headers={"x-api-key": stack.api_key}, timeout=10)
        assert polled.status_code == 200, polled.text
        result: dict[str, Any] = polled.json()
        if result["completed"]:
            assert result["status"] == "SUCCESS", result
            assert result["sessionId"] == started["sessionId"]
            return result
        time.sleep(0.05)
    raise AssertionError("the agent turn did not finish")


def conversation(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request["json"]["messages"]]


def test_a_session_carries_three_turns_across_a_restart(setup: tuple[Path, Path], fake: FakeOpenAI) -> None:
    stack = start(setup)
    try:
        first = turn(stack, {"query": "My name is Ada."})
        session = first["sessionId"]
        assert session.startswith("helper_")
        assert first["data"]["output"] == "Echo: My name is Ada."
        second = turn(stack, {"query": "What is my name?", "sessionId": session})
        assert second["data"]["output"] == "Echo: What is my name?"
        assert conversation(fake.requests[-1]) == [
            ("system", INSTRUCTIONS),
            ("user", "My name is Ada."),
            ("assistant", "Echo: My name is Ada."),
            ("user", "What is my name?"),
        ]
    finally:
        assert stop_stack(stack) == 0, stack.logs()

    stack = start(setup, api_key=stack.api_key)  # the same data directory and key
    try:
        third = turn(stack, {"query": "And again?", "sessionId": session})
        assert third["sessionId"] == session
        assert conversation(fake.requests[-1]) == [
            ("system", INSTRUCTIONS),
            ("user", "My name is Ada."),
            ("assistant", "Echo: My name is Ada."),
            ("user", "What is my name?"),
            ("assistant", "Echo: What is my name?"),
            ("user", "And again?"),
        ]
        # The first turn's result is still there to poll after the restart.
        polled = httpx.get(
            f"{stack.url}/sdk/agents/{first['requestId']}/result", headers={"x-api-key": stack.api_key}, timeout=10
        )
        assert polled.json()["data"]["output"] == "Echo: My name is Ada."
    finally:
        assert stop_stack(stack) == 0, stack.logs()


def test_a_client_history_is_used_when_there_is_no_session(agents_stack: Stack, fake: FakeOpenAI) -> None:
    history = [
        {"role": "user", "content": "Help me plan a project"},
        {"role": "assistant", "content": "Sure! What kind of project?"},
    ]
    turn(agents_stack, {"query": "Continue from where we left off", "history": history})
    assert conversation(fake.requests[-1]) == [
        ("system", INSTRUCTIONS),
        ("user", "Help me plan a project"),
        ("assistant", "Sure! What kind of project?"),
        ("user", "Continue from where we left off"),
    ]


def test_the_agent_calls_another_catalog_model_as_a_tool(agents_stack: Stack, fake: FakeOpenAI) -> None:
    query = "use tool fakeb-chat: the capital of France"
    result = turn(agents_stack, {"query": query})
    assert result["steps"] == 3  # the model, the tool model, the model again
    asked, tool, answered = (r["json"] for r in fake.requests[-3:])
    assert [t["function"]["name"] for t in asked["tools"]] == ["fakeb-chat"]
    assert asked["tools"][0]["function"]["parameters"]["required"] == ["text"]
    # The tool model got the text the model passed, and nothing else.
    assert conversation({"json": tool}) == [("user", "the capital of France")]
    assert "tools" not in tool
    # Its answer went back to the model as the tool call's result.
    assert answered["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_fake1",
        "content": "Echo: the capital of France",
    }
    assert result["data"]["output"] == f"Echo: {query}"


def test_sessions_and_runs_are_private_and_bad_input_is_refused(agents_stack: Stack, fake: FakeOpenAI) -> None:
    mine = turn(agents_stack, {"query": "secret"})
    other = create_key(agents_stack, [agents_stack.url])
    stolen = run(agents_stack, {"query": "hi", "sessionId": mine["sessionId"]}, key=other)
    assert stolen.status_code == 404, stolen.text
    assert stolen.json()["error"]["type"] == "not_found_error"
    url = f"{agents_stack.url}/sdk/agents/{mine['requestId']}/result"
    deadline = time.monotonic() + 10
    peek = httpx.get(url, headers={"x-api-key": other}, timeout=10)
    while peek.status_code == 401 and time.monotonic() < deadline:  # until usage knows the new key
        time.sleep(0.05)
        peek = httpx.get(url, headers={"x-api-key": other}, timeout=10)
    assert peek.status_code == 404, peek.text
    unknown = run(agents_stack, {"query": "hi"}, agent="nobody")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "agent_not_found"
    tool_history = run(
        agents_stack, {"query": "hi", "history": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}
    )
    assert tool_history.status_code == 400 and tool_history.json()["error"]["param"] == "history"
    no_query = run(agents_stack, {"sessionId": mine["sessionId"]})
    assert no_query.status_code == 400 and no_query.json()["error"]["param"] == "query"
