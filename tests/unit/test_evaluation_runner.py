"""The evaluation runner and the score emitter against a real in-process RecordScores
service that can be made to fail: scores survive a usage outage in the spool, judge
failures become evaluator errors, live averages see only real scores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as rpb
from interlock.usage.v1 import usage_pb2 as pb
from services.common.clock import SystemClock
from services.common.errors import UpstreamError
from services.common.spool import Spool
from services.router.evaluation.runner import Evaluations
from services.router.evaluation.score_emitter import ScoreEmitter
from services.router.stats import QualityScores

SERVICE = pb.DESCRIPTOR.services_by_name["UsageService"].full_name
EVENT = pb.UsageEvent(request_id="req_1", model="m", key_id="k", project="p", provider="x", time_unix_ms=7_200_000)


class ScoreLedger:
    def __init__(self) -> None:
        self.addr = ""
        self.stored: dict[tuple[str, str], pb.QualityScore] = {}
        self.down = False

    async def RecordScores(
        self, request: pb.RecordScoresRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RecordScoresResponse:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ledger_unavailable")
        for score in request.scores:
            self.stored[(score.request_id, score.evaluator)] = score
        return pb.RecordScoresResponse(stored=len(request.scores))


@pytest.fixture
async def ledger() -> AsyncIterator[ScoreLedger]:
    servicer = ScoreLedger()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.RecordScores,
        request_deserializer=pb.RecordScoresRequest.FromString,
        response_serializer=pb.RecordScoresResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"RecordScores": handler})])
    servicer.addr = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    yield servicer
    await server.stop(None)


@pytest.fixture
async def emitter(ledger: ScoreLedger, tmp_path: Path) -> AsyncIterator[ScoreEmitter]:
    channel = grpc.aio.insecure_channel(ledger.addr)
    spool = Spool.open(tmp_path / "scores.db")
    made = ScoreEmitter(channel, spool, batch_size=2, flush_seconds=0.01, max_backoff_seconds=0.05)
    made.start()
    yield made
    await made.close(wait_seconds=0)
    spool.close()
    await channel.close(None)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def specs() -> list[cpb.Evaluator]:
    return [
        cpb.Evaluator(name="json", kind="json", sample_rate=1.0),
        cpb.Evaluator(name="judge", kind="judge", sample_rate=1.0, judge_model="j", rubric="r", pass_threshold=0.5),
        cpb.Evaluator(name="never", kind="json", sample_rate=0.0),
    ]


async def test_scores_outlive_a_usage_outage(ledger: ScoreLedger, emitter: ScoreEmitter) -> None:
    quality = QualityScores()
    runner = Evaluations(emitter.emit, quality, SystemClock())

    async def judge(model: str, messages: list[rpb.Message], event: pb.UsageEvent) -> str:
        assert (model, event.request_id) == ("j", "req_1")
        return '{"score": 0.75, "reason": "ok"}'

    ledger.down = True
    runner.schedule(specs(), (), "prompt", '{"a": 1}', event=EVENT, judge=judge)
    await until(lambda: emitter.spooled == 2, "the scores to be spooled")
    assert ledger.stored == {}
    ledger.down = False
    await until(lambda: len(ledger.stored) == 2 and emitter.spooled == 0, "the spool to be replayed")
    judged = ledger.stored[("req_1", "judge")]
    assert (judged.score, judged.passed, judged.source, judged.detail) == (0.75, True, pb.SCORE_SOURCE_JUDGE, "ok")
    assert (judged.key_id, judged.project, judged.model, judged.request_time_unix_ms) == ("k", "p", "m", 7_200_000)
    assert ledger.stored[("req_1", "json")].source == pb.SCORE_SOURCE_EVALUATOR
    assert quality.average("m", 2) == pytest.approx((1.0 + 0.75) / 2)
    await runner.close(wait_seconds=1)


async def test_a_failing_judge_is_an_evaluator_error(ledger: ScoreLedger, emitter: ScoreEmitter) -> None:
    quality = QualityScores()
    runner = Evaluations(emitter.emit, quality, SystemClock())

    async def judge(model: str, messages: list[rpb.Message], event: pb.UsageEvent) -> str:
        raise UpstreamError("judge provider down", code="provider_unavailable", http_status=503)

    runner.schedule(specs(), (), "prompt", "not json", event=EVENT, judge=judge)
    await until(lambda: len(ledger.stored) == 2, "delivery")
    judged = ledger.stored[("req_1", "judge")]
    assert judged.error and not judged.passed and "provider_unavailable" in judged.detail
    assert ledger.stored[("req_1", "json")].score == 0.0
    # Only the real score counts towards the live average.
    assert quality.average("m", 1) == 0.0 and quality.average("m", 2) is None
    await runner.close(wait_seconds=1)


async def test_nothing_sampled_starts_nothing(emitter: ScoreEmitter) -> None:
    runner = Evaluations(emitter.emit, QualityScores(), SystemClock(), max_running=1)

    async def judge(model: str, messages: list[rpb.Message], event: pb.UsageEvent) -> str:
        await asyncio.sleep(10)
        return "1"

    runner.schedule([cpb.Evaluator(name="n", kind="json", sample_rate=0.0)], (), "", "", event=EVENT, judge=judge)
    assert runner.running == 0
    runner.schedule(specs()[1:2], (), "", "", event=EVENT, judge=judge)
    runner.schedule(specs()[1:2], (), "", "", event=EVENT, judge=judge)  # over max_running: skipped, not queued
    assert runner.running == 1
    await runner.close(wait_seconds=0.01)
    assert runner.running == 0


async def test_scoped_evaluators_join_and_the_most_specific_name_wins(
    ledger: ScoreLedger, emitter: ScoreEmitter
) -> None:
    asked: list[tuple[str, str]] = []

    def scoped(project: str, key_id: str) -> list[cpb.Evaluator]:
        asked.append((project, key_id))
        return [
            cpb.Evaluator(name="team", kind="refusal", sample_rate=1.0),
            cpb.Evaluator(name="size", kind="length", max_chars=100, sample_rate=1.0),
        ]

    runner = Evaluations(emitter.emit, QualityScores(), SystemClock(), scoped=scoped)

    async def judge(model: str, messages: list[rpb.Message], event: pb.UsageEvent) -> str:
        raise AssertionError("no judge here")

    model_specs = [cpb.Evaluator(name="size", kind="length", max_chars=1, sample_rate=1.0)]
    request_specs = [cpb.Evaluator(name="team", kind="regex", pattern="x", sample_rate=1.0)]
    runner.schedule(model_specs, request_specs, "prompt", "hello", event=EVENT, judge=judge)
    await until(lambda: len(ledger.stored) == 2, "delivery")
    assert asked == [("p", "k")]
    # The project's "size" (max 100) replaced the model's (max 1); the request's "team" the project's.
    assert (ledger.stored[("req_1", "size")].passed, ledger.stored[("req_1", "team")].kind) == (True, "regex")
    await runner.close(wait_seconds=1)


async def test_a_runaway_regex_stalls_no_request_work(ledger: ScoreLedger, emitter: ScoreEmitter) -> None:
    runner = Evaluations(emitter.emit, QualityScores(), SystemClock())

    async def judge(model: str, messages: list[rpb.Message], event: pb.UsageEvent) -> str:
        return "1"

    # Catastrophic backtracking: stopped after its time limit, on the evaluation thread, and
    # without holding the GIL, so the event loop keeps running meanwhile.
    redos = [cpb.Evaluator(name="redos", kind="regex", pattern="^(a|aa)+$", sample_rate=1.0)]
    runner.schedule(redos, (), "", "a" * 60 + "!", event=EVENT, judge=judge)
    ticks = 0
    while not ledger.stored:
        started = time.monotonic()
        await asyncio.sleep(0.01)
        assert time.monotonic() - started < 0.3  # the loop was never held up
        ticks += 1
    assert ticks > 20  # the check really ran for a while
    stopped = ledger.stored[("req_1", "redos")]
    assert stopped.error and "ran for over 1s" in stopped.detail
    await runner.close(wait_seconds=0)
