"""Job and session storage behind one interface; one module per backend.

Rows hold the Job / Session messages as bytes, with the few columns queries need
(status, update time) beside them: the messages evolve with the protos, the tables
do not. A running job's update time is its lease: its runner renews it (touch), and
a job whose lease lapsed (its runner died) is claimed by whichever runner sees it
first, with a compare-and-set on that time.
"""

from __future__ import annotations

from typing import Protocol

from interlock.jobs.v1 import jobs_pb2 as jpb

FINISHED = (jpb.JOB_STATUS_COMPLETED, jpb.JOB_STATUS_FAILED)


class JobStore(Protocol):
    def create(self, job: jpb.Job) -> jpb.Job:
        """Store a new job; an id already stored keeps its job, which is returned instead."""
        ...

    def save(self, job: jpb.Job) -> None:
        """Replace a stored job (its status, result, error)."""
        ...

    def get(self, job_id: str) -> jpb.Job | None: ...

    def stale(self, before_ms: int) -> list[tuple[jpb.Job, int]]:
        """Jobs still queued or running whose runner has not been heard of since before_ms
        (its lease lapsed), oldest first, each with the update time a claim must match."""
        ...

    def claim(self, job_id: str, seen_ms: int, now_ms: int) -> bool:
        """Take over a stale job, unless another runner touched or claimed it since seen_ms."""
        ...

    def touch(self, job_ids: list[str], now_ms: int) -> None:
        """Renew the lease of jobs this runner is running."""
        ...

    def get_session(self, session_id: str) -> jpb.Session | None: ...

    def save_session(self, session: jpb.Session, time_ms: int) -> None:
        """Create or replace a session."""
        ...

    def delete_before(self, time_ms: int) -> int:
        """Delete finished jobs and sessions last updated before time_ms; returns how many rows went."""
        ...

    def close(self) -> None: ...
