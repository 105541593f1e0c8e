"""RateLimitService: the edge's Check, Settle and Lease, mapped onto the limiter."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import grpc

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.common.clock import Clock
from services.common.errors import InvalidRequestError
from services.ratelimit import leases, metrics
from services.ratelimit.limiter import Limiter, binding, state, tightest
from services.ratelimit.policy import Floors, Rules, scopes_for
from services.ratelimit.quotas import MICRO, Decision, Kind, LeaseClaim, LeaseOutcome

Context = grpc.aio.ServicerContext[Any, Any]
UNAVAILABLE_QUOTA = "ratelimit:unavailable"


class RateLimitServicer(ratelimit_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: Limiter, rules: Rules, floors: Floors, clock: Clock, *, lease_ms: int = 1000) -> None:
        self._limiter = limiter
        self._rules = rules
        self._floors = floors
        self._clock = clock
        self._lease_ms = lease_ms

    async def Check(self, request: pb.CheckRequest, context: Context) -> pb.CheckResponse:
        with metrics.CHECK_TIMER.time():
            return await self._check(request)

    async def _check(self, request: pb.CheckRequest) -> pb.CheckResponse:
        scopes = scopes_for(request, self._rules, self._floors, self._clock.now())
        if not scopes:
            metrics.count_decision(True)
            return pb.CheckResponse(allowed=True)
        decision = await self._limiter.decide(
            scopes, request.reservation_id or uuid.uuid4().hex, int(request.hold_seconds)
        )
        if decision is None:
            allowed = self._limiter.degraded_allows
            metrics.count_degraded(allowed)
            return pb.CheckResponse(
                allowed=allowed, degraded=True, quota=UNAVAILABLE_QUOTA, retry_after_seconds=0 if allowed else 1
            )
        metrics.count_decision(decision.allowed, None if decision.allowed else binding(decision))
        return response(decision, self._limiter.now_us())

    async def Settle(self, request: pb.SettleRequest, context: Context) -> pb.SettleResponse:
        check = request.check
        if not check.reservation_id:
            return pb.SettleResponse(settled=False)
        scopes = scopes_for(check, self._rules, self._floors, self._clock.now())
        settled = await self._limiter.settle(scopes, check.reservation_id, request.used_tokens, request.used_usd)
        return pb.SettleResponse(settled=settled)

    async def SettleBatch(self, request: pb.SettleBatchRequest, context: Context) -> pb.SettleBatchResponse:
        # Together, so a Redis backend overlaps its round trips.
        results = await asyncio.gather(*(self.Settle(settle, context) for settle in request.settles))
        return pb.SettleBatchResponse(settled=sum(1 for r in results if r.settled))

    async def Lease(self, request: pb.LeaseRequest, context: Context) -> pb.LeaseResponse:
        if request.claims and not request.holder:
            raise InvalidRequestError("a lease claim needs its holder", param="holder")
        now = self._clock.now()
        out = pb.LeaseResponse(
            shapes=[leases.shape(check, self._rules, self._floors, now) for check in request.shapes],
            ttl_ms=self._lease_ms,
        )
        quotas = [leases.quota_of(claim.bucket, self._floors) for claim in request.claims]
        claims: list[LeaseClaim | None] = [
            leases.claim_of(claim, quota) if quota is not None else None
            for claim, quota in zip(request.claims, quotas, strict=True)
        ]
        decided = [c for c in claims if c is not None]
        outcomes: list[LeaseOutcome | None] = [None] * len(claims)
        if decided:
            result = await self._limiter.lease(decided, request.holder, self._lease_ms * 1000)
            if result is None:
                out.degraded = True
            else:
                answers = iter(result.outcomes)
                outcomes = [next(answers) if c is not None else None for c in claims]
        now_us = self._limiter.now_us()
        for claim, quota, lease_claim, outcome in zip(request.claims, quotas, claims, outcomes, strict=True):
            out.leases.append(leases.answer(claim, quota, outcome, now_us))
            metrics.LEASE_CLAIMS.labels(leases.result_label(lease_claim, outcome)).inc()
        return out

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        s = self._limiter.stats
        return pb.GetStatsResponse(
            checks=s.checks,
            allowed=s.allowed,
            refused=s.refused,
            settles=s.settles,
            backend_errors=s.backend_errors,
            failed_open=s.failed_open,
            failed_closed=s.failed_closed,
            backend=self._limiter.backend.name,
        )


def response(decision: Decision, now_us: int) -> pb.CheckResponse:
    # One QuotaState per outcome, reused for the summary fields: this runs on every request.
    states = {id(o): state(o, now_us) for o in decision.outcomes}
    out = pb.CheckResponse(allowed=decision.allowed, quotas=states.values())
    described = binding(decision)
    if described is not None:
        described_state = states[id(described)]
        out.limit = described_state.limit
        out.remaining = described_state.remaining
        out.reset_at = described_state.reset_at
        out.quota = described_state.name
        if not decision.allowed:
            out.exceeded = described_state.kind
            out.retry_after_seconds = max(math.ceil(described.retry_us / MICRO), 1) if described.retry_us else 0
    for kind, field in ((Kind.REQUESTS, "requests"), (Kind.TOKENS, "tokens")):
        outcome = tightest(decision.outcomes, kind)
        if outcome is not None:
            getattr(out, field).CopyFrom(states[id(outcome)])
    return out
