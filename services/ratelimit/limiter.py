"""Deciding: the backend call, what happens when the backend is down, and the
counters that say how often it was."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from services.common.clock import Clock
from services.ratelimit.metrics import BACKEND_FAILURES
from services.ratelimit.quotas import (
    MICRO,
    NANO,
    Backend,
    BackendUnavailableError,
    Decision,
    Kind,
    LeaseClaim,
    LeaseResult,
    Quota,
    QuotaOutcome,
    Scope,
)

log = logging.getLogger(__name__)


@dataclass
class Stats:
    checks: int = 0
    allowed: int = 0
    refused: int = 0
    settles: int = 0
    backend_errors: int = 0
    failed_open: int = 0
    failed_closed: int = 0


class Limiter:
    """Runs decisions against the backend. When the backend fails, fail_open
    admits (consuming nothing) and fail closed refuses; either way the failure
    is logged once per outage and counted, and the next call simply tries the
    backend again, so recovery needs nobody."""

    def __init__(self, backend: Backend, clock: Clock, *, fail_open: bool, hold_seconds: int) -> None:
        self.backend = backend
        self.stats = Stats()
        self._clock = clock
        self._fail_open = fail_open
        self._hold_us = hold_seconds * MICRO
        self._down = False

    def now_us(self) -> int:
        return int(self._clock.now() * MICRO)

    async def decide(self, scopes: Sequence[Scope], reservation_id: str, hold_seconds: int = 0) -> Decision | None:
        """The decision, or None when the backend failed (see degraded_allows)."""
        self.stats.checks += 1
        hold_us = hold_seconds * MICRO if hold_seconds > 0 else self._hold_us
        try:
            decision = await self.backend.acquire(scopes, reservation_id, self.now_us(), hold_us)
        except BackendUnavailableError as exc:
            self._failed(exc)
            if self._fail_open:
                self.stats.failed_open += 1
                self.stats.allowed += 1
            else:
                self.stats.failed_closed += 1
                self.stats.refused += 1
            return None
        self._recovered()
        if decision.allowed:
            self.stats.allowed += 1
        else:
            self.stats.refused += 1
        return decision

    @property
    def degraded_allows(self) -> bool:
        return self._fail_open

    async def settle(self, scopes: Sequence[Scope], reservation_id: str, used_tokens: int, used_usd: float) -> bool:
        self.stats.settles += 1
        used_nano = max(math.ceil(used_usd * NANO), 0)
        try:
            settled = await self.backend.settle(scopes, reservation_id, self.now_us(), max(used_tokens, 0), used_nano)
        except BackendUnavailableError as exc:
            # The hold lapses by itself; the ledger floor brings the spend back.
            self._failed(exc)
            return False
        self._recovered()
        return settled

    async def lease(self, claims: Sequence[LeaseClaim], holder: str, ttl_us: int) -> LeaseResult | None:
        """The backend's lease answers, or None when it failed: then nothing was granted
        or reported, and the holder asks per request (where fail open/closed applies)."""
        try:
            result = await self.backend.lease(claims, holder, self.now_us(), ttl_us)
        except BackendUnavailableError as exc:
            self._failed(exc)
            return None
        self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        self.stats.backend_errors += 1
        BACKEND_FAILURES.inc()
        if not self._down:
            self._down = True
            mode = "admitting (fail open)" if self._fail_open else "refusing (fail closed)"
            log.error("rate-limit backend %s unavailable, %s until it returns: %s", self.backend.name, mode, exc)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.warning("rate-limit backend %s is back; enforcing limits again", self.backend.name)


def state(outcome: QuotaOutcome, now_us: int) -> pb.QuotaState:
    return pb.QuotaState(
        name=outcome.quota.name,
        kind=pb.QuotaKind.ValueType(int(outcome.quota.kind)),
        limit=outcome.quota.limit,
        remaining=max(outcome.remaining, 0),
        reset_at=reset_at(outcome, now_us),
        allowed=outcome.allowed,
    )


def reset_at(outcome: QuotaOutcome, now_us: int) -> int:
    return quota_reset_at(outcome.quota, outcome.reset_us, now_us)


def quota_reset_at(quota: Quota, reset_us: int, now_us: int) -> int:
    """Unix seconds when the quota is full again (a budget: when its period ends)."""
    if quota.kind is Kind.BUDGET:
        return quota.period_end
    return math.ceil((now_us + reset_us) / MICRO)


def binding(decision: Decision) -> QuotaOutcome | None:
    """The quota a response should describe: the one that refused (a budget
    first, then the longest wait), else the request quota with least left."""
    refused = [o for o in decision.outcomes if not o.allowed]
    if refused:
        return max(refused, key=lambda o: (o.quota.kind is Kind.BUDGET, o.retry_us))
    return tightest(decision.outcomes, Kind.REQUESTS)


def tightest(outcomes: Sequence[QuotaOutcome], kind: Kind) -> QuotaOutcome | None:
    candidates = [o for o in outcomes if o.quota.kind is kind]
    return min(candidates, key=lambda o: (o.remaining, o.quota.limit)) if candidates else None
