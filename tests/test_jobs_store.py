"""The job store's contract, on SQLite and on the real PostgreSQL: jobs created
once by id, replaced, found again when unfinished, sessions kept, and the
retention sweep deleting only finished jobs and idle sessions past the cutoff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from services.usage.jobs.postgres import PostgresJobStore
from services.usage.jobs.sqlite import SqliteJobStore
from services.usage.jobs.store import JobStore
from tests.support.keystore import PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    opened: JobStore
    if request.param == "sqlite":
        opened = SqliteJobStore(tmp_path / "jobs.db")
    else:
        admin: psycopg.Connection = request.getfixturevalue("admin")
        schema: str = request.getfixturevalue("pg_schema")
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        opened = PostgresJobStore(make_conninfo(PG_URL, options=f"-c search_path={schema}"))
    yield opened
    opened.close()


def job(job_id: str, status: jpb.JobStatus.ValueType, updated_ms: int, text: str = "hi") -> jpb.Job:
    chat = pb.ChatRequest(model="demo-chat", messages=[pb.Message(role=pb.ROLE_USER, content=text)])
    made = jpb.Job(id=job_id, key_id="key_a", target="demo-chat", status=status, spec=jpb.JobSpec(chat=chat))
    made.create_time.FromMilliseconds(updated_ms)
    made.update_time.FromMilliseconds(updated_ms)
    return made


def test_a_job_is_created_once_and_replaced_by_save(store: JobStore) -> None:
    first = store.create(job("req_1", jpb.JOB_STATUS_QUEUED, 1000, "first"))
    assert first.spec.chat.messages[0].content == "first"
    # A second submit under the same id keeps the stored job.
    again = store.create(job("req_1", jpb.JOB_STATUS_QUEUED, 2000, "second"))
    assert again == first
    done = job("req_1", jpb.JOB_STATUS_COMPLETED, 3000, "first")
    done.output = "answer"
    store.save(done)
    assert store.get("req_1") == done
    assert store.get("req_unknown") is None


def stale_ids(store: JobStore, before_ms: int) -> list[str]:
    return [j.id for j, _seen in store.stale(before_ms)]


def test_unfinished_jobs_with_a_lapsed_lease_are_stale_oldest_first(store: JobStore) -> None:
    store.create(job("req_run", jpb.JOB_STATUS_RUNNING, 2000))
    store.create(job("req_queue", jpb.JOB_STATUS_QUEUED, 1000))
    store.create(job("req_fresh", jpb.JOB_STATUS_RUNNING, 9000))
    store.create(job("req_done", jpb.JOB_STATUS_COMPLETED, 500))
    store.create(job("req_failed", jpb.JOB_STATUS_FAILED, 500))
    assert stale_ids(store, 5000) == ["req_queue", "req_run"]
    assert store.stale(5000)[0][1] == 1000


def test_a_touched_lease_is_not_stale_and_a_claim_wins_once(store: JobStore) -> None:
    store.create(job("req_a", jpb.JOB_STATUS_RUNNING, 1000))
    store.create(job("req_b", jpb.JOB_STATUS_RUNNING, 1000))
    store.touch(["req_a"], 6000)  # its runner is alive
    assert stale_ids(store, 5000) == ["req_b"]
    [(_job, seen)] = store.stale(5000)
    assert store.claim("req_b", seen, 7000)
    # A second runner that saw the same lapsed lease loses: the first took it over.
    assert not store.claim("req_b", seen, 7001)
    assert stale_ids(store, 5000) == []
    # A finished job is never claimed or touched back to life.
    store.save(job("req_a", jpb.JOB_STATUS_COMPLETED, 8000))
    store.touch(["req_a"], 9000)
    assert not store.claim("req_a", 8000, 9000)
    assert stale_ids(store, 100_000) == ["req_b"]  # req_a is done for good


def test_sessions_are_created_and_replaced(store: JobStore) -> None:
    session = jpb.Session(id="helper_1", key_id="key_a", agent_id="helper")
    store.save_session(session, 1000)
    session.messages.append(pb.Message(role=pb.ROLE_USER, content="hello"))
    store.save_session(session, 2000)
    assert store.get_session("helper_1") == session
    assert store.get_session("helper_2") is None


def test_the_sweep_deletes_finished_jobs_and_idle_sessions_before_the_cutoff(store: JobStore) -> None:
    store.create(job("req_old_done", jpb.JOB_STATUS_COMPLETED, 1000))
    store.create(job("req_old_running", jpb.JOB_STATUS_RUNNING, 1000))
    store.create(job("req_new_done", jpb.JOB_STATUS_COMPLETED, 5000))
    store.save_session(jpb.Session(id="s_old", key_id="key_a"), 1000)
    store.save_session(jpb.Session(id="s_new", key_id="key_a"), 5000)
    assert store.delete_before(3000) == 2
    assert store.get("req_old_done") is None and store.get_session("s_old") is None
    # A job still running is never swept: it is run again instead.
    assert store.get("req_old_running") is not None
    assert store.get("req_new_done") is not None and store.get_session("s_new") is not None


def test_a_sqlite_store_keeps_its_jobs_across_a_reopen(tmp_path: Path) -> None:
    first = SqliteJobStore(tmp_path / "jobs.db")
    first.create(job("req_kept", jpb.JOB_STATUS_RUNNING, 1000))
    first.close()
    second = SqliteJobStore(tmp_path / "jobs.db")
    assert stale_ids(second, 2000) == ["req_kept"]
    second.close()
