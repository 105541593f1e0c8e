"""Ledger storage backends behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from interlock.usage.v1 import usage_pb2 as pb

# Re-exported: defined with the other domain errors so every peer rebuilds it by name.
from services.common.errors import LedgerUnavailableError as LedgerUnavailableError


class SpendTotal(NamedTuple):
    """What one key or project spent, in USD: in all, and since the period start."""

    id: str
    total_usd: float
    period_usd: float


class SpendTotals(NamedTuple):
    keys: list[SpendTotal]
    projects: list[SpendTotal]


# Dimensions an aggregate can be grouped by. "model" is the catalog model that answered,
# or the model asked for when none did (so failures still count against a model).
# "day" and "hour" are UTC and come back as the start of the bucket in Unix ms.
DIMENSIONS = ("key", "project", "model", "provider", "day", "hour")


@dataclass(frozen=True)
class AggregateQuery:
    """Sum the hourly rollups over [start_ms, end_ms), grouped by group_by; filters match exactly."""

    start_ms: int
    end_ms: int
    group_by: tuple[str, ...] = ()
    key_id: str = ""
    project: str = ""
    model: str = ""
    provider: str = ""


@dataclass
class AggregateRow:
    """One group. dims maps each grouped dimension to its value ("day"/"hour": bucket start in Unix ms)."""

    dims: dict[str, str | int]
    requests: int = 0
    successful: int = 0
    failed: int = 0
    latency_ms_sum: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    ttft_ms_sum: int = 0
    # Streams with a time to first token, the divisor of ttft_ms_sum.
    ttft_count: int = 0
    # Evaluation scores of the group's requests (errors left out): their sum and count, and
    # the requests with at least one. Merged in from the scores table (store.scores).
    score_sum: float = 0.0
    score_count: int = 0
    scored_requests: int = 0


class EventStore(Protocol):
    def insert(self, events: Sequence[pb.UsageEvent]) -> tuple[int, int]:
        """Store events idempotently by request id; returns (stored, duplicates)."""
        ...

    def count(self, request: pb.CountEventsRequest) -> int: ...

    def spend(self, period_start_unix_ms: int) -> SpendTotals:
        """Sum cost_usd per key and per project (anonymous ones left out), in all and from the period start on."""
        ...

    def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        """Read the hourly rollups (never the events), with the groups' evaluation scores
        merged in: rows ordered by their dims."""
        ...

    def insert_scores(self, scores: Sequence[pb.QualityScore]) -> int:
        """Upsert by (request id, evaluator, source): a replay rewrites the same rows. Returns rows written."""
        ...

    def find_event(self, request_id: str) -> pb.UsageEvent | None:
        """The request's key, project, model, provider and time (other fields empty), or None."""
        ...

    def close(self) -> None: ...
