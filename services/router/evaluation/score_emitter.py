"""Delivers evaluation scores to the usage ledger with the usage events' machinery:
batched off the request path, spooled to a local file of their own when the usage
service does not take them, replayed later. RecordScores upserts by (request id,
evaluator, source), so a batch sent twice stores the same rows."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from interlock.usage.v1 import usage_pb2 as pb
from services.router.usage_emitter import SpoolingEmitter

PENDING_SCORES = Gauge("interlock_usage_pending_scores", "Evaluation scores held in memory, not yet delivered.")
SPOOL_SCORES = Gauge("interlock_usage_spool_scores", "Evaluation scores in the local spool, waiting to be replayed.")
SPOOLED_SCORES = Counter("interlock_usage_scores_spooled", "Evaluation scores written to the local spool.")
REPLAYED_SCORES = Counter("interlock_usage_scores_replayed", "Spooled evaluation scores delivered.")
DEAD_LETTERED_SCORES = Counter(
    "interlock_usage_scores_dead_lettered", "Evaluation scores the usage service rejected as invalid, set aside."
)


class ScoreEmitter(SpoolingEmitter[pb.QualityScore]):
    what = "evaluation scores"
    noun = "scores"
    spool_name = "score"
    pending_gauge = PENDING_SCORES
    spool_gauge = SPOOL_SCORES
    spooled_counter = SPOOLED_SCORES
    replayed_counter = REPLAYED_SCORES
    dead_lettered_counter = DEAD_LETTERED_SCORES

    def decode(self, payload: bytes) -> pb.QualityScore:
        return pb.QualityScore.FromString(payload)

    def ident(self, item: pb.QualityScore) -> str:
        return f"{item.request_id}/{item.evaluator}"

    async def call(self, items: Sequence[pb.QualityScore], timeout_seconds: float) -> None:
        await self._stub.RecordScores(pb.RecordScoresRequest(scores=items), timeout=timeout_seconds)
