"""Runs a request's evaluators in the background, after its answer has been sent.

The servicer hands over the answer text with the request's usage event once the
request is finished; nothing here is awaited by a request. Each evaluator yields
one QualityScore, sent to the ledger through the score emitter (durable, like
usage events) and fed to the live quality averages router:quality may use. An
evaluator that fails (a judge call failing, a judge answering junk) yields a
score row marked as an error: recorded, left out of every average, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Counter

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from interlock.usage.v1 import usage_pb2 as upb
from services.common.clock import Clock
from services.common.errors import InterlockError
from services.router.evaluation.checks import DETAIL_CHARS, Outcome, run_check, sampled
from services.router.evaluation.judge import JudgeReplyError, judge_messages, parse_judge_score
from services.router.stats import QualityScores

log = logging.getLogger(__name__)

# (judge model id, messages, the evaluated request's event) -> the judge's reply text.
JudgeCall = Callable[[str, list[pb.Message], upb.UsageEvent], Awaitable[str]]
# (project, key id) -> the catalog's evaluators for that project and that key, in that order.
ScopedLookup = Callable[[str, str], Sequence[cpb.Evaluator]]

EVALUATIONS_SKIPPED = Counter(
    "interlock_router_evaluations_skipped", "Sampled evaluations not run because too many were already running."
)
# Evaluations running at once; beyond this new ones are skipped (and counted) rather than
# let a slow judge pile up memory.
MAX_RUNNING = 256


class Evaluations:
    def __init__(
        self,
        sink: Callable[[upb.QualityScore], None],
        quality: QualityScores,
        clock: Clock,
        *,
        scoped: ScopedLookup | None = None,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self._sink = sink
        self._quality = quality
        self._clock = clock
        self._scoped = scoped
        # The deterministic checks run on a thread of their own: a client's pathological regex
        # or schema then stalls evaluations only, never the event loop or the shared pool the
        # usage spool's disk I/O uses.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
        self._max_running = max_running
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def schedule(
        self,
        model_specs: Sequence[cpb.Evaluator],
        request_specs: Sequence[cpb.Evaluator],
        prompt: str,
        answer: str,
        *,
        event: upb.UsageEvent,
        judge: JudgeCall,
    ) -> None:
        """Start the sampled evaluators (see choose) on this answer; returns at once."""
        chosen = self.choose(model_specs, request_specs, event)
        if chosen:
            self.start(chosen, prompt, answer, event=event, judge=judge)

    def choose(
        self, model_specs: Sequence[cpb.Evaluator], request_specs: Sequence[cpb.Evaluator], event: upb.UsageEvent
    ) -> list[cpb.Evaluator]:
        """The sampled ones of the model's, the request's project's and key's, and the request's
        own evaluators. Of evaluators with the same name the most specific runs: the request's,
        then the key's, the project's, the model's."""
        scoped = self._scoped(event.project, event.key_id) if self._scoped is not None else ()
        by_name = {s.name: s for s in (*model_specs, *scoped, *request_specs)}
        return [s for s in by_name.values() if sampled(event.request_id, s.name, s.sample_rate)]

    def start(
        self, chosen: list[cpb.Evaluator], prompt: str, answer: str, *, event: upb.UsageEvent, judge: JudgeCall
    ) -> None:
        """Run the chosen evaluators in the background, unless too many are running already."""
        if len(self._tasks) >= self._max_running:
            EVALUATIONS_SKIPPED.inc()
            log.warning("%d evaluations running; skipping those of %s", len(self._tasks), event.request_id)
            return
        task = asyncio.get_running_loop().create_task(self._run(chosen, prompt, answer, event, judge))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, wait_seconds: float) -> None:
        """Let running evaluations finish for up to wait_seconds, then cancel the rest."""
        pending = set(self._tasks)
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wait(pending), wait_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # A check still running (a runaway regex) is abandoned, not waited for.
        self._checks.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self, specs: list[cpb.Evaluator], prompt: str, answer: str, event: upb.UsageEvent, judge: JudgeCall
    ) -> None:
        for spec in specs:
            try:
                if spec.kind == "judge":
                    outcome = await self._judge(spec, prompt, answer, event, judge)
                else:
                    outcome = await asyncio.get_running_loop().run_in_executor(self._checks, run_check, spec, answer)
            except Exception as exc:  # one broken evaluator must not take the others down
                log.exception("evaluator %s failed on %s", spec.name, event.request_id)
                outcome = Outcome(0.0, False, f"evaluator failed: {type(exc).__name__}", error=True)
            self._record(spec, outcome, event)

    async def _judge(
        self, spec: cpb.Evaluator, prompt: str, answer: str, event: upb.UsageEvent, judge: JudgeCall
    ) -> Outcome:
        try:
            reply = await judge(spec.judge_model, judge_messages(spec.rubric, prompt, answer), event)
        except InterlockError as exc:
            return Outcome(0.0, False, f"judge call failed ({exc.code}): {exc}"[:DETAIL_CHARS], error=True)
        try:
            score, reason = parse_judge_score(reply)
        except JudgeReplyError as exc:
            return Outcome(0.0, False, str(exc)[:DETAIL_CHARS], error=True)
        return Outcome(score, score >= spec.pass_threshold, reason[:DETAIL_CHARS])

    def _record(self, spec: cpb.Evaluator, outcome: Outcome, event: upb.UsageEvent) -> None:
        self._sink(
            upb.QualityScore(
                request_id=event.request_id,
                evaluator=spec.name,
                kind=spec.kind,
                source=upb.SCORE_SOURCE_JUDGE if spec.kind == "judge" else upb.SCORE_SOURCE_EVALUATOR,
                score=outcome.score,
                passed=outcome.passed,
                detail=outcome.detail,
                error=outcome.error,
                time_unix_ms=int(self._clock.now() * 1000),
                request_time_unix_ms=event.time_unix_ms,
                key_id=event.key_id,
                project=event.project,
                model=event.model,
                provider=event.provider,
            )
        )
        if not outcome.error:
            self._quality.observe(event.model, outcome.score)
