"""`interlock up` supervises its processes: restart, give up cleanly, stop cleanly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
HI = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status not in ("Z", "X")


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path / "data")
    yield stack
    if stack.process.poll() is None:  # a test that failed half-way must not leak a stack
        stop_stack(stack)


# What to kill in each mode: an edge worker (the router runs inside it), or the router process.
@pytest.mark.parametrize(("mode", "victim"), [("colocated", "edge-1"), ("microservices", "router")])
def test_dead_process_is_restarted_then_sigterm_stops_everything(tmp_path: Path, mode: str, victim: str) -> None:
    stack = start_stack(tmp_path / "data", mode=mode, workers=2 if mode == "colocated" else None)
    try:
        _restart_then_stop(stack, victim)
    finally:
        if stack.process.poll() is None:
            stop_stack(stack)


def _restart_then_stop(stack: Stack, victim: str) -> None:
    first = dict(stack.layout["pids"])  # type: ignore[call-overload]
    os.kill(first[victim], signal.SIGKILL)
    assert _wait(lambda: stack.layout["pids"][victim] != first[victim], 30), stack.logs()  # type: ignore[index]
    # The others were left alone.
    assert {k: v for k, v in stack.layout["pids"].items() if k != victim} == {  # type: ignore[union-attr]
        k: v for k, v in first.items() if k != victim
    }
    if victim.startswith("edge"):
        # The restarted worker serves on its own port again (and on the shared one, with the other).
        worker = stack.workers[victim]
        assert httpx.get(f"{worker}/healthz", timeout=10).status_code == 200
        reply = httpx.post(f"{worker}/v1/chat/completions", headers=stack.headers(), json=HI, timeout=30)
        assert reply.status_code == 200, reply.text
    for _ in range(4):  # fresh connections: over the shared port they may land on either worker
        reply = httpx.post(f"{stack.base_url}/chat/completions", headers=stack.headers(), json=HI, timeout=30)
        assert reply.status_code == 200, reply.text
    assert f"{victim} died" in stack.logs()
    assert f"/dashboard#key={stack.admin_key}" in stack.logs()  # the start-up banner links the dashboard

    pids = list(stack.layout["pids"].values())  # type: ignore[union-attr]
    assert stop_stack(stack) == 0
    assert not any(_alive(pid) for pid in pids)
    assert "stopped" in stack.logs()


def test_children_die_with_a_supervisor_killed_outright(own_stack: Stack) -> None:
    pids = list(own_stack.layout["pids"].values())  # type: ignore[union-attr]
    own_stack.process.kill()  # no chance to stop them itself
    own_stack.process.wait(10)
    # Each child asked Linux for SIGTERM on its parent's death when it started.
    assert _wait(lambda: not any(_alive(pid) for pid in pids), 30), [p for p in pids if _alive(p)]


def test_a_service_that_keeps_dying_stops_the_whole_stack(own_stack: Stack) -> None:
    stack = own_stack
    for _ in range(4):
        pid = stack.layout["pids"]["usage"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: stack.process.poll() is not None or stack.layout["pids"]["usage"] != pid, 30)  # type: ignore[index]  # noqa: B023
        if stack.process.poll() is not None:
            break
    assert stack.process.wait(30) == 1
    assert "stopping the whole stack" in stack.logs()
    assert not any(_alive(pid) for pid in stack.layout["pids"].values())  # type: ignore[union-attr]


def test_bad_catalog_refuses_to_start_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "catalog.yaml"
    config.write_text("providers:\n  p: {kind: telepathy}\nmodels: []\n")
    with pytest.raises(RuntimeError) as failed:
        start_stack(tmp_path / "data", config=config)
    message = str(failed.value)
    assert "unknown provider kind 'telepathy'" in message and "providers.p.kind" in message
    assert "failed to start" in message
