"""What the execute and agents routes share: submitting a job with the request's
quota reservation settled, reading one back as its owner, and seed 002's
(aiXplain's) JSON shapes for both."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.auth import presented_key
from gateway.context import Admitted, EdgeContext
from interlock.jobs.v1 import jobs_pb2 as jpb
from services.common.errors import AuthenticationError, InterlockError
from services.common.rpc import REQUEST_ID_KEY
from services.common.wire.common import usage_to_json

STATUS = {
    jpb.JOB_STATUS_QUEUED: "IN_PROGRESS",
    jpb.JOB_STATUS_RUNNING: "IN_PROGRESS",
    jpb.JOB_STATUS_COMPLETED: "SUCCESS",
    jpb.JOB_STATUS_FAILED: "FAILED",
}


async def submit(edge: EdgeContext, admitted: Admitted, spec: jpb.JobSpec, wait_seconds: float) -> jpb.Job:
    """Submit and wait; settle the reservation with the job's usage when it finished in the
    wait, else release it (the ledger still records what the job spends; budgets re-read it)."""
    with edge.settling(admitted) as used:
        response = await edge.jobs.SubmitJob(
            jpb.SubmitJobRequest(spec=spec, wait_seconds=wait_seconds),
            timeout=wait_seconds + edge.settings.request_timeout_seconds,
        )
        if response.job.status == jpb.JOB_STATUS_COMPLETED:
            used.usage = response.job.usage
    return response.job


async def fetch(edge: EdgeContext, request: Request, job_id: str) -> jpb.Job:
    """The job, read with the caller's own key: the job service answers 404 to anyone but its owner."""
    secret = presented_key(request.headers)
    if secret is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'."
        )
    metadata = (("x-api-key", secret), (REQUEST_ID_KEY, str(request.scope["state"]["request_id"])))
    response = await edge.jobs.GetJob(jpb.GetJobRequest(id=job_id), metadata=metadata, timeout=10.0)
    return response.job


def failure(job: jpb.Job) -> InterlockError:
    error = InterlockError(job.error.message, code=job.error.code, http_status=job.error.http_status or 500)
    error.error_type = job.error.type or error.error_type
    return error


def poll_url(request: Request, path: str) -> str:
    return f"{str(request.base_url).rstrip('/')}{path}"


def run_time_seconds(job: jpb.Job) -> float:
    return max(job.update_time.ToMilliseconds() - job.create_time.ToMilliseconds(), 0) / 1000


def execute_json(job: jpb.Job, url: str) -> dict[str, Any]:
    """A model job as aiXplain's execute / poll answers: the text in `data` when done,
    the poll URL in `data` (and `url`) while not."""
    body: dict[str, Any] = {"status": STATUS.get(job.status, "IN_PROGRESS"), "requestId": job.id}
    if job.status == jpb.JOB_STATUS_COMPLETED:
        body.update(
            completed=True,
            data=job.output,
            usedCredits=round(job.usage.cost_usd, 10),
            runTime=run_time_seconds(job),
            usage=usage_to_json(job.usage),
        )
    elif job.status == jpb.JOB_STATUS_FAILED:
        # aiXplain's SDK reads a poll with `error_message` as failed.
        body.update(completed=True, data="", error_message=job.error.message, error=_error(job))
    else:
        body.update(completed=False, data=url, url=url)
    return body


def agent_json(job: jpb.Job, url: str) -> dict[str, Any]:
    """An agent turn: its session, and when done the answer in data.output."""
    body: dict[str, Any] = {
        "status": STATUS.get(job.status, "IN_PROGRESS"),
        "requestId": job.id,
        "sessionId": job.session_id,
        "completed": job.status in (jpb.JOB_STATUS_COMPLETED, jpb.JOB_STATUS_FAILED),
    }
    if job.status == jpb.JOB_STATUS_COMPLETED:
        body.update(
            data={"input": job.spec.agent.query, "output": job.output, "session_id": job.session_id},
            usedCredits=round(job.usage.cost_usd, 10),
            runTime=run_time_seconds(job),
            usage=usage_to_json(job.usage),
            steps=job.steps,
        )
    elif job.status == jpb.JOB_STATUS_FAILED:
        body.update(data=None, error_message=job.error.message, error=_error(job))
    else:
        body.update(data=url, url=url)
    return body


def _error(job: jpb.Job) -> dict[str, Any]:
    return {"type": job.error.type, "message": job.error.message, "param": None, "code": job.error.code}
