"""Runs jobs: stores each before it starts, runs it in the background and lets the
submitter wait a while for it. A running job holds a lease (its stored update time,
renewed every lease/3 seconds); a job whose lease lapsed because its runner died, or
that a stopping runner released, is claimed and run again by any runner (this
process after a restart, or another replica). So a job runs at least once: one cut off mid-call is called again,
and the ledger, idempotent by request id, still counts it once. A sweeper deletes
finished jobs and idle sessions past the retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import grpc

from interlock.jobs.v1 import jobs_pb2 as jpb
from interlock.router.v1 import router_pb2 as pb
from interlock.router.v1 import router_pb2_grpc
from services.common.catalog_cache import CatalogCache
from services.common.clock import Clock
from services.common.errors import InterlockError, InvalidRequestError, NotFoundError, ServerError, from_rpc_error
from services.usage.jobs import agent
from services.usage.jobs.store import FINISHED, JobStore

log = logging.getLogger(__name__)
SWEEP_INTERVAL_SECONDS = 300.0
# A running job's lease: renewed every third of it; lapsed, another runner takes the job over.
LEASE_SECONDS = 30.0
CATALOG_WAIT_SECONDS = 30.0
# A lease renewed at the epoch has lapsed for every runner: the job is free to claim.
RELEASED_MS = 0


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        router: router_pb2_grpc.RouterServiceAsyncStub,
        cache: CatalogCache,
        clock: Clock,
        *,
        call_timeout_seconds: float,
        retention_seconds: float,
        lease_seconds: float = LEASE_SECONDS,
        sweep_interval_seconds: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self._store = store
        self._router = router
        self._cache = cache
        self._clock = clock
        self._call_timeout = call_timeout_seconds
        self._retention = retention_seconds
        self._sweep_interval = sweep_interval_seconds
        self._lease = max(lease_seconds, 0.3)  # renewed every third: never a busy loop
        self._running: dict[str, asyncio.Task[jpb.Job]] = {}
        self._background: list[asyncio.Task[None]] = []
        # Saves in flight: a cancelled job's save still runs to the end in its thread.
        self._saving: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Start renewing leases and adopting lapsed ones, and the sweeper."""
        self._background = [
            asyncio.create_task(self._lease_forever()),
            asyncio.create_task(self._sweep_forever()),
        ]

    async def close(self) -> None:
        """Stop; jobs cut off here are released, so the next runner (this process restarted,
        or another replica) takes them over at once instead of after their lease."""
        cut_off = list(self._running)
        tasks = [*self._running.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A save landing after the release would renew the lease it gave up.
        await asyncio.gather(*self._saving, return_exceptions=True)
        if cut_off:
            try:
                await asyncio.to_thread(self._store.touch, cut_off, RELEASED_MS)
            except InterlockError as exc:
                log.warning("releasing %d unfinished jobs failed (their lease will lapse): %s", len(cut_off), exc)

    async def submit(self, spec: jpb.JobSpec, wait_seconds: float) -> jpb.Job:
        job = self._new_job(spec)
        turn = spec.agent if spec.HasField("agent") else None
        if turn is not None and turn.session_id:
            await self._check_session(job)
        stored = await asyncio.to_thread(self._store.create, job)
        if stored.key_id != job.key_id:
            # Clients may choose their X-Request-Id: one key's id never reaches another key's job.
            raise InvalidRequestError(
                "This request id is already in use; send another X-Request-Id.",
                code="duplicate_request_id",
                param="X-Request-Id",
                http_status=409,
            )
        if turn is not None and not turn.session_id and stored == job:
            # Stored now, so the next turn can name it even before this one ends.
            started = jpb.Session(id=job.session_id, key_id=job.key_id, agent_id=turn.agent_id, messages=turn.history)
            await asyncio.to_thread(self._store.save_session, started, self._now_ms())
        task = self._running.get(stored.id)
        if task is None and stored.status not in FINISHED:
            task = self._launch(stored)
        if task is None or wait_seconds <= 0:
            return stored if task is None else await self.get_any(stored.id) or stored
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(task), wait_seconds)
        return await self.get_any(stored.id) or stored

    async def _check_session(self, job: jpb.Job) -> None:
        """A turn continues a session of its own key's and agent's; any other is unknown to it."""
        turn = job.spec.agent
        session = await asyncio.to_thread(self._store.get_session, turn.session_id)
        if session is None or session.key_id != job.key_id or session.agent_id != turn.agent_id:
            raise NotFoundError(f"The session '{turn.session_id}' does not exist.", code="session_not_found")

    async def get_any(self, job_id: str) -> jpb.Job | None:
        return await asyncio.to_thread(self._store.get, job_id)

    def _new_job(self, spec: jpb.JobSpec) -> jpb.Job:
        caller = spec.chat.caller if spec.HasField("chat") else spec.caller
        job = jpb.Job(
            id=caller.request_id,
            key_id=caller.key_id,
            project=caller.project,
            status=jpb.JOB_STATUS_QUEUED,
            spec=spec,
        )
        if spec.HasField("agent"):
            job.target = spec.agent.agent_id
            # aiXplain's SDK expects an agent's session ids to start with "<agent id>_".
            job.session_id = spec.agent.session_id or f"{spec.agent.agent_id}_{secrets.token_hex(12)}"
        else:
            job.target = spec.chat.model
        now_ms = self._now_ms()
        job.create_time.FromMilliseconds(now_ms)
        job.update_time.FromMilliseconds(now_ms)
        return job

    def _launch(self, job: jpb.Job) -> asyncio.Task[jpb.Job]:
        task = asyncio.create_task(self._run(job))
        self._running[job.id] = task
        task.add_done_callback(lambda _t: self._running.pop(job.id, None))
        return task

    async def _run(self, job: jpb.Job) -> jpb.Job:
        job.status = jpb.JOB_STATUS_RUNNING
        await self._save(job)
        try:
            if job.spec.HasField("agent"):
                await self._run_agent(job)
            else:
                response = await self._chat(job.spec.chat)
                job.result.CopyFrom(response)
                job.output = agent.text_of(response.choices[0].message) if response.choices else ""
                job.usage.CopyFrom(response.usage)
                job.steps = 1
            job.status = jpb.JOB_STATUS_COMPLETED
        except asyncio.CancelledError:
            raise  # shutting down: the job stays running and is run again on the next start
        except Exception as exc:  # every failure is the job's result
            error = exc if isinstance(exc, InterlockError) else ServerError("internal error")
            if not isinstance(exc, InterlockError):
                log.exception("job %s failed", job.id)
            job.status = jpb.JOB_STATUS_FAILED
            job.error.CopyFrom(
                jpb.JobError(
                    type=error.error_type, code=error.code, message=error.message, http_status=error.http_status
                )
            )
        await self._save(job)
        return job

    async def _chat(self, request: pb.ChatRequest) -> pb.ChatResponse:
        try:
            # wait_for_ready: jobs run again at start may start before the router does.
            response: pb.ChatResponse = await self._router.Chat(
                request, timeout=self._call_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        return response

    async def _run_agent(self, job: jpb.Job) -> None:
        turn = job.spec.agent
        # A job run again at start may come before the first catalog snapshot.
        await asyncio.wait_for(self._cache.catalog_ready(), CATALOG_WAIT_SECONDS)
        definition = self._cache.agents.get(turn.agent_id)
        if definition is None:
            raise NotFoundError(f"The agent '{turn.agent_id}' does not exist.", code="agent_not_found")
        session = await asyncio.to_thread(self._store.get_session, job.session_id)
        history = agent.history_from(turn, session)
        done = await agent.run_turn(definition, turn, history, job.spec.caller, self._chat)
        job.result.CopyFrom(done.result)
        job.output = done.output
        job.usage.CopyFrom(done.usage)
        job.steps = done.steps
        kept = jpb.Session(id=job.session_id, key_id=job.key_id, agent_id=turn.agent_id, messages=history)
        kept.messages.extend(done.messages)
        await asyncio.to_thread(self._store.save_session, kept, self._now_ms())

    async def _save(self, job: jpb.Job) -> None:
        job.update_time.FromMilliseconds(self._now_ms())
        saving = asyncio.ensure_future(asyncio.to_thread(self._store.save, job))
        self._saving.add(saving)
        saving.add_done_callback(self._saving.discard)
        await asyncio.shield(saving)

    async def renew_and_adopt(self) -> int:
        """Renew the leases of this runner's jobs; claim and run the jobs whose lease lapsed.
        Returns how many were adopted."""
        now_ms = self._now_ms()
        if self._running:
            await asyncio.to_thread(self._store.touch, list(self._running), now_ms)
        adopted = 0
        for job, seen_ms in await asyncio.to_thread(self._store.stale, now_ms - int(self._lease * 1000)):
            if job.id in self._running or not await asyncio.to_thread(self._store.claim, job.id, seen_ms, now_ms):
                continue
            log.info("running job %s again: its runner stopped before it finished", job.id)
            self._launch(job)
            adopted += 1
        return adopted

    async def _lease_forever(self) -> None:
        while True:
            try:
                await self.renew_and_adopt()
            except InterlockError as exc:
                log.warning("renewing job leases failed: %s", exc.message)
            await asyncio.sleep(self._lease / 3)

    async def sweep(self) -> int:
        cutoff = self._now_ms() - int(self._retention * 1000)
        return await asyncio.to_thread(self._store.delete_before, cutoff)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info("deleted %d expired jobs and sessions", deleted)
            except InterlockError as exc:
                log.warning("sweeping jobs failed: %s", exc.message)
            await asyncio.sleep(self._sweep_interval)

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)
