"""JobService: submit a job (internal, trusted caller context) and read one back
(only by the key that submitted it, or the admin key)."""

from __future__ import annotations

from typing import Any

import grpc

from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.jobs.v1 import jobs_pb2_grpc
from services.common.errors import InvalidRequestError, NotFoundError
from services.usage.callers import CallerResolver
from services.usage.jobs.runner import JobRunner

Context = grpc.aio.ServicerContext[Any, Any]
# The edge waits a few seconds; more than this is a held connection, not a wait.
MAX_WAIT_SECONDS = 60.0


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, runner: JobRunner, callers: CallerResolver) -> None:
        self._runner = runner
        self._callers = callers

    async def SubmitJob(self, request: jpb.SubmitJobRequest, context: Context) -> jpb.SubmitJobResponse:
        spec = request.spec
        caller = spec.chat.caller if spec.HasField("chat") else spec.caller
        if not spec.HasField("chat") and not spec.HasField("agent"):
            raise InvalidRequestError("a job needs a chat request or an agent turn", param="spec")
        if not caller.request_id:
            raise InvalidRequestError("a job needs the caller's request id", param="caller.request_id")
        wait = min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
        return jpb.SubmitJobResponse(job=await self._runner.submit(spec, wait))

    async def GetJob(self, request: jpb.GetJobRequest, context: Context) -> jpb.GetJobResponse:
        caller = self._callers.resolve(context.invocation_metadata() or ())
        job = await self._runner.get_any(request.id) if request.id else None
        # Another key's job is answered exactly as an unknown one: its existence is not told.
        if job is None or (caller.key is not None and caller.key.id != job.key_id):
            raise NotFoundError(f"No request with id '{request.id}'.", code="request_not_found", param="request_id")
        return jpb.GetJobResponse(job=job)
