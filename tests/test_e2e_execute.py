"""Seed 002's execute / poll API end to end, on real processes: answered at once,
answered with a requestId and polled, private to the key that asked, durable across
a restart of the usage service (a job cut off mid-run runs again), and spoken by
aiXplain's own SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import UPSTREAM_KEY, catalog_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import create_key
from tests.support.stack import Stack, stack_on_catalog

WAIT_SECONDS = 0.5
SLOW_SECONDS = 1.5
LEASE_SECONDS = 1.0


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def jobs_stack(tmp_path_factory: pytest.TempPathFactory, slow_fake: FakeOpenAI) -> Iterator[Stack]:
    """A stack whose edge waits only WAIT_SECONDS for a job before answering with a requestId."""
    env = {
        "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
        "INTERLOCK_EDGE_EXECUTE_WAIT_SECONDS": str(WAIT_SECONDS),
        # A job whose runner died is taken over after this long.
        "INTERLOCK_JOBS_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    with stack_on_catalog(tmp_path_factory.mktemp("jobs"), catalog_for(slow_fake), env) as running:
        yield running


@pytest.fixture
def fake(slow_fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    slow_fake.reset()
    yield slow_fake
    slow_fake.reset()


def execute(stack: Stack, model: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"x-api-key": key or stack.api_key}
    return httpx.post(f"{stack.url}/api/v2/execute/{model}", json=body, headers=headers, timeout=30)


def poll(stack: Stack, request_id: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{stack.url}/api/v2/data/{request_id}", headers={"x-api-key": key or stack.api_key}, timeout=10)


def poll_until_done(stack: Stack, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = poll(stack, request_id)
        except httpx.TransportError:
            reply = None
        # 503 while usage restarts; anything else must be the job.
        if reply is not None and reply.status_code != 503:
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            if body["completed"]:
                return body
        time.sleep(0.1)
    raise AssertionError(f"job {request_id} did not finish in {timeout}s")


def test_a_quick_model_answers_at_once(stack: Stack, upstream: FakeOpenAI) -> None:
    reply = execute(stack, "fake-chat", {"text": "What is 2 + 2?", "max_tokens": 10, "temperature": 0.8})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "SUCCESS" and body["completed"] is True
    assert body["data"] == "Echo: What is 2 + 2?"
    assert body["requestId"] == reply.headers["x-request-id"]
    assert body["usage"]["total_tokens"] > 0 and body["runTime"] >= 0
    sent = upstream.requests[-1]["json"]
    assert sent["max_tokens"] == 10 and sent["temperature"] == 0.8
    # The poll answers the same finished job.
    assert poll(stack, body["requestId"]).json()["data"] == "Echo: What is 2 + 2?"
    assert stack.wait_for_events(1, request_id=body["requestId"]) == 1


def test_chat_history_is_sent_as_messages(stack: Stack, upstream: FakeOpenAI) -> None:
    history = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there! How can I help?"},
        {"role": "user", "content": "Tell me a fun fact."},
    ]
    reply = execute(stack, "fake-chat", {"text": history})
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == "Echo: Tell me a fun fact."
    assert upstream.requests[-1]["json"]["messages"] == history


def test_a_failed_job_answers_in_the_error_shape_and_polls_as_failed(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.fail_next(400, times=1)
    reply = execute(stack, "fake-chat", {"text": "refused"})
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["error"]["type"] == "invalid_request_error" and error["status"] == 400
    polled = poll(stack, error["request_id"]).json()
    assert polled["status"] == "FAILED" and polled["completed"] is True
    assert polled["error_message"] == error["error"]["message"]


def test_bad_requests_get_the_error_shape(stack: Stack) -> None:
    missing = execute(stack, "fake-chat", {"max_tokens": 3})
    assert missing.status_code == 400, missing.text
    assert missing.json()["error"]["param"] == "text"
    unknown = execute(stack, "no-such-model", {"text": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    anonymous = httpx.post(f"{stack.url}/api/v2/execute/fake-chat", json={"text": "hi"}, timeout=10)
    assert anonymous.status_code == 401


def test_a_slow_model_is_answered_with_a_request_id_then_polled(jobs_stack: Stack, fake: FakeOpenAI) -> None:
    fake.first_token_delay = SLOW_SECONDS
    reply = execute(jobs_stack, "fake-chat", {"text": "take your time"})
    assert reply.status_code == 200, reply.text
    pending = reply.json()
    assert pending["status"] == "IN_PROGRESS" and pending["completed"] is False
    request_id = pending["requestId"]
    assert pending["data"] == pending["url"] == f"{jobs_stack.url}/api/v2/data/{request_id}"
    assert poll(jobs_stack, request_id).json()["status"] == "IN_PROGRESS"
    done = poll_until_done(jobs_stack, request_id)
    assert done["status"] == "SUCCESS" and done["data"] == "Echo: take your time"
    assert "error_message" not in done


def test_polls_of_unknown_and_other_keys_jobs_are_not_found(jobs_stack: Stack, fake: FakeOpenAI) -> None:
    unknown = poll(jobs_stack, "req_does_not_exist")
    assert unknown.status_code == 404, unknown.text
    body = unknown.json()
    assert body["error"]["type"] == "not_found_error" and body["status"] == 404
    assert body["request_id"] == unknown.headers["x-request-id"]

    mine = execute(jobs_stack, "fake-chat", {"text": "private"}).json()["requestId"]
    other = create_key(jobs_stack, [jobs_stack.url])
    deadline = time.monotonic() + 10
    reply = poll(jobs_stack, mine, key=other)
    while reply.status_code == 401 and time.monotonic() < deadline:  # until usage knows the new key
        time.sleep(0.05)
        reply = poll(jobs_stack, mine, key=other)
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"]["type"] == "not_found_error"
    # The admin key reads every job.
    assert poll(jobs_stack, mine, key=jobs_stack.admin_key).status_code == 200
    # A client-chosen request id cannot reach another key's job either.
    taken = httpx.post(
        f"{jobs_stack.url}/api/v2/execute/fake-chat",
        json={"text": "mine now?"},
        headers={"x-api-key": other, "X-Request-Id": mine},
        timeout=30,
    )
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"]["code"] == "duplicate_request_id"
    # The same key sending the same id again gets its own job back (an idempotent retry).
    retried = httpx.post(
        f"{jobs_stack.url}/api/v2/execute/fake-chat",
        json={"text": "private"},
        headers={"x-api-key": jobs_stack.api_key, "X-Request-Id": mine},
        timeout=30,
    )
    assert retried.status_code == 200 and retried.json()["requestId"] == mine


def test_jobs_survive_a_restart_of_usage_and_interrupted_ones_run_again(jobs_stack: Stack, fake: FakeOpenAI) -> None:
    finished = execute(jobs_stack, "fake-chat", {"text": "before the restart"}).json()
    assert finished["status"] == "SUCCESS", finished

    fake.first_token_delay = 3.0
    pending = execute(jobs_stack, "fake-chat", {"text": "cut off"}).json()
    assert pending["status"] == "IN_PROGRESS"
    deadline = time.monotonic() + 10
    while not any(r["json"]["messages"][-1]["content"] == "cut off" for r in fake.requests):
        assert time.monotonic() < deadline, "the job never reached the upstream"
        time.sleep(0.05)
    old_pid = jobs_stack.pid("usage")
    os.kill(old_pid, signal.SIGKILL)  # mid-run: no chance to finish or record anything
    fake.first_token_delay = 0.0

    done = poll_until_done(jobs_stack, pending["requestId"])
    assert done["status"] == "SUCCESS" and done["data"] == "Echo: cut off"
    assert jobs_stack.pid("usage") != old_pid  # `interlock up` restarted it
    calls = [r for r in fake.requests if r["json"]["messages"][-1]["content"] == "cut off"]
    assert len(calls) == 2  # run again after the restart: at least once
    # Counted once in the ledger all the same (events are idempotent by request id).
    assert jobs_stack.wait_for_events(1, request_id=pending["requestId"]) == 1
    again = poll(jobs_stack, finished["requestId"]).json()
    assert again["status"] == "SUCCESS" and again["data"] == "Echo: before the restart"


SDK_SCRIPT = """
import json, sys
from aixplain.factories import ModelFactory
model = ModelFactory.get(sys.argv[1])
response = model.run(sys.argv[2], max_tokens=50, wait_time=0.1, timeout=30)
print(json.dumps({"kind": type(model).__name__, "status": str(response.status.value), "data": response.data,
                  "completed": response.completed}))
"""


def test_the_aixplain_sdk_runs_a_model_through_the_gateway(jobs_stack: Stack, fake: FakeOpenAI, tmp_path: Path) -> None:
    # Slower than the edge's wait, so the SDK gets a requestId and polls for the answer.
    fake.first_token_delay = SLOW_SECONDS
    env = {
        **os.environ,
        "BACKEND_URL": jobs_stack.url,
        "MODELS_RUN_URL": f"{jobs_stack.url}/api/v1/execute",
        "AIXPLAIN_ALLOW_INSECURE_URLS": "1",
        "TEAM_API_KEY": jobs_stack.api_key,
        "HOME": str(tmp_path),  # the SDK's asset cache goes under it
    }
    env.pop("AIXPLAIN_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, "fake-chat", "Hello from the SDK"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"kind": "LLM", "status": "SUCCESS", "data": "Echo: Hello from the SDK", "completed": True}
