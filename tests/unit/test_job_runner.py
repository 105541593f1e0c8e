"""The job runner's bookkeeping with a pinned clock: the retention sweep, and the
refusals that come before a job is stored (another key's request id or session).
Running jobs needs the router: tests/test_e2e_execute.py and test_e2e_agents.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.catalog_cache import CatalogCache
from services.common.clock import ManualClock
from services.common.errors import InvalidRequestError, NotFoundError
from services.usage.jobs.runner import JobRunner
from services.usage.jobs.sqlite import SqliteJobStore

HOUR = 3600.0


def runner_on(store: SqliteJobStore, clock: ManualClock, channel: grpc.aio.Channel) -> JobRunner:
    return JobRunner(
        store,
        router_pb2_grpc.RouterServiceStub(channel),
        CatalogCache(channel, watch_keys=False),
        clock,
        call_timeout_seconds=1,
        retention_seconds=24 * HOUR,
    )


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[JobRunner, SqliteJobStore, ManualClock]]:
    # Nothing listens on this channel: a job's router call waits for it until the call times out.
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    store = SqliteJobStore(tmp_path / "jobs.db")
    clock = ManualClock()
    runner = runner_on(store, clock, channel)
    yield runner, store, clock
    await runner.close()
    store.close()
    await channel.close(grace=None)


def finished(job_id: str, clock: ManualClock) -> jpb.Job:
    job = jpb.Job(id=job_id, key_id="key_a", status=jpb.JOB_STATUS_COMPLETED)
    job.update_time.FromMilliseconds(int(clock.now() * 1000))
    return job


async def test_the_sweep_deletes_what_outlived_the_retention(
    parts: tuple[JobRunner, SqliteJobStore, ManualClock],
) -> None:
    runner, store, clock = parts
    store.create(finished("req_old", clock))
    clock.advance(23 * HOUR)
    store.create(finished("req_new", clock))
    assert await runner.sweep() == 0
    clock.advance(2 * HOUR)
    assert await runner.sweep() == 1
    assert store.get("req_old") is None and store.get("req_new") is not None


def agent_spec(request_id: str, key_id: str, session_id: str = "") -> jpb.JobSpec:
    turn = jpb.AgentTurn(agent_id="helper", query="hi", session_id=session_id)
    return jpb.JobSpec(agent=turn, caller=pb.CallerContext(request_id=request_id, key_id=key_id))


async def test_another_keys_session_or_request_id_is_refused_before_anything_runs(
    parts: tuple[JobRunner, SqliteJobStore, ManualClock],
) -> None:
    runner, store, clock = parts
    store.save_session(jpb.Session(id="helper_1", key_id="key_a", agent_id="helper"), 0)
    with pytest.raises(NotFoundError):
        await runner.submit(agent_spec("req_1", "key_b", "helper_1"), 0)
    with pytest.raises(NotFoundError):
        await runner.submit(agent_spec("req_2", "key_a", "helper_unknown"), 0)
    store.create(finished("req_taken", clock))
    with pytest.raises(InvalidRequestError) as info:
        await runner.submit(agent_spec("req_taken", "key_b"), 0)
    assert info.value.http_status == 409
    assert store.get("req_1") is None and store.get("req_2") is None
    assert store.delete_before(10**15) == 2  # the one session and the taken job: nothing else was left


@pytest.mark.parametrize("started", [False, True], ids=["stopped-at-once", "stopped-mid-call"])
async def test_a_stopping_runner_releases_its_unfinished_jobs_to_the_next(
    parts: tuple[JobRunner, SqliteJobStore, ManualClock], started: bool
) -> None:
    runner, store, clock = parts
    spec = jpb.JobSpec(
        chat=pb.ChatRequest(model="m", caller=pb.CallerContext(request_id="req_cut", key_id="key_a")),
    )
    # The router never answers (nothing listens; the call waits for it up to 1 s), so the
    # job is unfinished when the runner stops.
    job = await runner.submit(spec, 0)
    assert job.status in (jpb.JOB_STATUS_QUEUED, jpb.JOB_STATUS_RUNNING)
    for _ in range(200 if started else 0):
        stored = store.get("req_cut")
        if stored is not None and stored.status == jpb.JOB_STATUS_RUNNING:
            break
        await asyncio.sleep(0.005)
    else:
        assert not started, "the job never started"
    await runner.close()
    cut_off = store.get("req_cut")
    # Cut off before it finished, whether or not it had got as far as running.
    assert cut_off is not None and cut_off.status in (jpb.JOB_STATUS_QUEUED, jpb.JOB_STATUS_RUNNING)
    # The very next runner takes it over: no lease (30 s by default) to wait out.
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    successor = runner_on(store, clock, channel)
    try:
        assert await successor.renew_and_adopt() == 1
        assert await successor.renew_and_adopt() == 0  # now it holds the lease itself
    finally:
        await successor.close()
        await channel.close(grace=None)
