"""GetSpend over real gRPC: the spend of real requests, summed per key and per project."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest

from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.errors import InvalidRequestError, from_rpc_error
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
# The edge reports each cost rounded to 1e-10 USD; the ledger sums the exact ones.
TOLERANCE = 1e-9


@pytest.fixture
def usage(stack: Stack) -> Iterator[usage_pb2_grpc.UsageServiceStub]:
    with grpc.insecure_channel(stack.service_addr("usage")) as channel:
        yield usage_pb2_grpc.UsageServiceStub(channel)


def admin(stack: Stack, method: str, path: str, body: dict[str, object]) -> dict[str, object]:
    response = httpx.request(method, f"{stack.base_url}{path}", headers=stack.admin_headers(), json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def new_key(stack: Stack, project: str) -> tuple[str, str]:
    """A fresh key in project, once the edge knows it: (secret, key id)."""
    created = admin(stack, "POST", "/keys", {"name": f"spend-{project}", "project": project})
    secret, key_id = str(created["key"]), str(created["id"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = httpx.get(f"{stack.base_url}/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        if probe.status_code == 200:
            return secret, key_id
        time.sleep(0.05)
    raise AssertionError(f"key {key_id} never reached the edge")


def spend_once(stack: Stack, secret: str, turn: int) -> tuple[str, float]:
    """One billed request (chat or embeddings, of varying size): its request id and reported cost."""
    rid = "spend-" + uuid.uuid4().hex
    with openai.OpenAI(base_url=stack.base_url, api_key=secret, max_retries=0, timeout=30) as client:
        if turn % 3 == 2:
            embedded = client.embeddings.create(
                model="demo-embed", input=["spend " * (turn + 1)], extra_headers={"X-Request-Id": rid}
            )
            extra = embedded.usage.model_extra or {}
        else:
            reply = client.chat.completions.create(
                model="demo-chat",
                messages=[{"role": "user", "content": "how much " * (turn + 1)}],
                max_tokens=2 + turn,
                extra_headers={"X-Request-Id": rid},
            )
            assert reply.usage is not None
            extra = reply.usage.model_extra or {}
    cost = float(extra["cost_usd"])
    assert cost > 0
    return rid, cost


def by_id(spends: list[usage_pb2.Spend]) -> dict[str, tuple[float, float]]:
    found = {s.id: (s.total_usd, s.period_usd) for s in spends}
    assert len(found) == len(spends), "one entry per id"
    return found


def test_spend_per_key_and_project_matches_what_responses_reported(
    stack: Stack, usage: usage_pb2_grpc.UsageServiceStub
) -> None:
    suffix = uuid.uuid4().hex[:8]
    alpha, beta = f"spend-alpha-{suffix}", f"spend-beta-{suffix}"
    for project in (alpha, beta):
        admin(stack, "POST", "/projects", {"id": project, "name": project})
    owners = {}  # key id -> (secret, project)
    for project in (alpha, alpha, beta):
        secret, key_id = new_key(stack, project)
        owners[key_id] = (secret, project)

    # Requests before the period start, then (once the clock has passed it) more after it.
    earlier = {key_id: [spend_once(stack, secret, turn) for turn in range(2)] for key_id, (secret, _) in owners.items()}
    period_start = int(time.time()) + 1
    while time.time() < period_start + 0.05:
        time.sleep(0.05)
    later = {key_id: [spend_once(stack, secret, turn) for turn in range(3)] for key_id, (secret, _) in owners.items()}

    rids = [rid for calls in (*earlier.values(), *later.values()) for rid, _ in calls]
    assert stack.events_per_request(rids) == dict.fromkeys(rids, 1)

    want_keys = {
        key_id: (sum(c for _, c in earlier[key_id] + later[key_id]), sum(c for _, c in later[key_id]))
        for key_id in owners
    }
    want_projects: dict[str, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))
    for key_id, (total, period) in want_keys.items():
        project = owners[key_id][1]
        want_projects[project] = (want_projects[project][0] + total, want_projects[project][1] + period)

    reply = usage.GetSpend(usage_pb2.GetSpendRequest(period_start_unix=period_start), timeout=10)
    keys, projects = by_id(list(reply.keys)), by_id(list(reply.projects))
    assert "" not in keys and "" not in projects
    for got, want in [(keys, want_keys), (projects, dict(want_projects))]:
        for owner, (total, period) in want.items():
            assert owner in got, owner
            assert got[owner][0] == pytest.approx(total, abs=TOLERANCE), owner
            assert got[owner][1] == pytest.approx(period, abs=TOLERANCE), owner
            assert 0 < got[owner][1] < got[owner][0]

    # The period start moves only the period sums. Only this test's owners are compared: a late
    # event of an earlier test in the session may land in between.
    ours = {**keys, **projects}
    for start, in_period in [(0, True), (int(time.time()) + 3600, False)]:
        moved = usage.GetSpend(usage_pb2.GetSpendRequest(period_start_unix=start), timeout=10)
        now = {**by_id(list(moved.keys)), **by_id(list(moved.projects))}
        for owner in [*want_keys, *want_projects]:
            total = ours[owner][0]
            assert now[owner] == (total, total if in_period else 0.0), (start, owner)


def test_spend_of_recorded_events_over_grpc(usage: usage_pb2_grpc.UsageServiceStub) -> None:
    """Events as the router records them, with chosen times and costs: exact sums, the boundary included."""
    tag = uuid.uuid4().hex[:8]
    key_a, key_b, project = f"key_spend_a_{tag}", f"key_spend_b_{tag}", f"spend-grpc-{tag}"
    start_ms = 1_700_000_000_000

    def event(key: str, project: str, offset_ms: int, cost: float) -> usage_pb2.UsageEvent:
        return usage_pb2.UsageEvent(
            request_id=f"spend-{uuid.uuid4().hex}", time_unix_ms=start_ms + offset_ms,
            key_id=key, project=project, cost_usd=cost, status=usage_pb2.STATUS_OK,
        )  # fmt: skip

    events = [
        event(key_a, project, -1, 1.0),
        event(key_a, project, 0, 0.5),
        event(key_b, project, 60_000, 0.25),
        event(key_b, "", -60_000, 2.0),
        event("", project, 1, 4.0),  # no key: counts for the project only
    ]
    recorded = usage.RecordEvents(usage_pb2.RecordEventsRequest(events=events), timeout=10)
    assert (recorded.stored, recorded.duplicates) == (len(events), 0)
    # Recording the same batch again changes nothing.
    assert usage.RecordEvents(usage_pb2.RecordEventsRequest(events=events), timeout=10).duplicates == len(events)

    reply = usage.GetSpend(usage_pb2.GetSpendRequest(period_start_unix=start_ms // 1000), timeout=10)
    keys, projects = by_id(list(reply.keys)), by_id(list(reply.projects))
    assert keys[key_a] == (1.5, 0.5)
    assert keys[key_b] == (2.25, 0.25)
    assert projects[project] == (5.75, 4.75)
    assert "" not in keys and "" not in projects


def test_negative_period_start_is_an_invalid_argument(usage: usage_pb2_grpc.UsageServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        usage.GetSpend(usage_pb2.GetSpendRequest(period_start_unix=-1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    error = from_rpc_error(info.value)
    assert type(error) is InvalidRequestError
    assert (error.param, error.http_status) == ("period_start_unix", 400)
