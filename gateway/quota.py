"""The edge's side of rate limiting: resolve a key's and its project's limits
from the cached catalog, ask ratelimit once per request (reserving tokens and
spend), turn the answer into headers or a 429, and settle afterwards."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from gateway.estimate import Estimate
from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from interlock.router.v1 import router_pb2 as pb
from services.common.catalog_cache import CatalogCache
from services.common.clock import Clock
from services.common.errors import InterlockError, RateLimitError, UpstreamError

log = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 2.0
SETTLE_BATCH_MAX = 256
SETTLE_TIMEOUT_SECONDS = 5.0
# An unsettled reservation outlives the longest request by this much before it lapses.
HOLD_MARGIN_SECONDS = 60
Headers = list[tuple[bytes, bytes]]


@dataclass
class Reservation:
    """A check that reserved tokens or spend, to settle when the request ends."""

    check: rpb.CheckRequest


@dataclass
class Admission:
    # Rate-limit headers for the response, 429s included.
    headers: Headers
    reservation: Reservation | None = None
    # The 429 or 503 to answer with, when the request may not proceed.
    refusal: InterlockError | None = None


class QuotaClient:
    def __init__(
        self,
        stub: ratelimit_pb2_grpc.RateLimitServiceAsyncStub,
        cache: CatalogCache,
        clock: Clock,
        *,
        fail_open: bool,
        hold_seconds: int,
        ip_limits: bool = True,
    ) -> None:
        self._stub = stub
        # False behind Envoy, whose rate limit filter takes the per-IP quotas from the same
        # counters: asking again here would count each request twice.
        self._ip_limits = ip_limits
        self._cache = cache
        self._clock = clock
        self._fail_open = fail_open
        self._hold_seconds = hold_seconds + HOLD_MARGIN_SECONDS
        # Settles run after the response, batched: the ones that finish while a batch is in
        # flight go together in the next. No timer: an idle edge settles at once.
        self._queue: list[rpb.SettleRequest] = []
        self._flusher: asyncio.Task[None] | None = None

    def key_limits(self, key: cpb.ApiKey) -> rpb.Limits:
        """The key's own overrides over its plan's (the default plan when it names none)."""
        plan = self._cache.plans.get(key.plan or self._cache.default_plan) or cpb.Plan()
        own_rate = key.requests_per_minute > 0
        return rpb.Limits(
            requests_per_minute=key.requests_per_minute if own_rate else plan.requests_per_minute,
            tokens_per_minute=key.tokens_per_minute or plan.tokens_per_minute,
            # A key's own rate without its own burst gets no burst of the plan's.
            burst=key.burst or (0 if own_rate else plan.burst),
            budget_usd=key.budget_usd,
            budget_period=key.budget_period,
        )

    def project_limits(self, project_id: str) -> rpb.Limits:
        project = self._cache.projects.get(project_id)
        if project is None:
            return rpb.Limits()
        return rpb.Limits(
            requests_per_minute=project.requests_per_minute,
            tokens_per_minute=project.tokens_per_minute,
            budget_usd=project.budget_usd,
            budget_period=project.budget_period,
        )

    async def check(
        self, caller: pb.CallerContext, key: cpb.ApiKey, estimate: Callable[[], Estimate] | None
    ) -> Admission:
        """One Check for every quota that applies to the request."""
        check = rpb.CheckRequest(
            key_id=caller.key_id,
            project=caller.project,
            client_ip=caller.client_ip if self._ip_limits else "",
            endpoint=caller.endpoint,
            key_limits=self.key_limits(key),
            project_limits=self.project_limits(caller.project),
            reservation_id=caller.request_id,
            hold_seconds=self._hold_seconds,
        )
        limits = (check.key_limits, check.project_limits)
        needs_tokens = any(lim.tokens_per_minute > 0 for lim in limits)
        needs_usd = any(lim.budget_usd > 0 for lim in limits)
        if estimate is not None and (needs_tokens or needs_usd):
            reserved = estimate()
            check.reserve_tokens = reserved.tokens
            check.reserve_usd = reserved.usd if needs_usd else 0.0
        try:
            decision: rpb.CheckResponse = await self._stub.Check(check, timeout=CHECK_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if self._fail_open:
                log.warning("ratelimit unreachable (%s); admitting (fail open)", exc.code().name)
                return Admission([])
            return Admission([], refusal=_unavailable())
        if decision.degraded and not decision.allowed:
            return Admission([], refusal=_unavailable())
        headers = self.headers(decision)
        if not decision.allowed:
            return Admission(headers, refusal=_refusal(decision))
        settle = not decision.degraded and (needs_tokens or needs_usd)
        return Admission(headers, Reservation(check) if settle else None)

    def headers(self, decision: rpb.CheckResponse) -> Headers:
        now = self._clock.now()
        out: Headers = []
        if decision.quota and decision.limit:
            out += [
                (b"x-ratelimit-limit", b"%d" % decision.limit),
                (b"x-ratelimit-remaining", b"%d" % decision.remaining),
                (b"x-ratelimit-reset", b"%d" % decision.reset_at),
            ]
        # OpenAI's own names, resets as durations ("1s", "6m0s").
        for state, unit in ((decision.requests, b"requests"), (decision.tokens, b"tokens")):
            if state.name:
                out += [
                    (b"x-ratelimit-limit-" + unit, b"%d" % state.limit),
                    (b"x-ratelimit-remaining-" + unit, b"%d" % state.remaining),
                    (b"x-ratelimit-reset-" + unit, duration(max(state.reset_at - now, 0)).encode()),
                ]
        return out

    def settle(self, reservation: Reservation | None, usage: pb.Usage | None) -> None:
        """Settle in the background with what the request used (nothing, when it failed)."""
        if reservation is None:
            return
        request = rpb.SettleRequest(check=reservation.check)
        if usage is not None:
            request.used_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
            request.used_usd = usage.cost_usd
        self._queue.append(request)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:SETTLE_BATCH_MAX], self._queue[SETTLE_BATCH_MAX:]
            try:
                await self._stub.SettleBatch(rpb.SettleBatchRequest(settles=batch), timeout=SETTLE_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                # The holds lapse by themselves and the ledger brings the spend back.
                log.warning("settling %d reservations failed: %s", len(batch), exc.code().name)

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)


def _unavailable() -> UpstreamError:
    return UpstreamError(
        "Rate limiting is unavailable; try again shortly.", code="ratelimit_unavailable", http_status=503
    )


def _refusal(decision: rpb.CheckResponse) -> RateLimitError:
    retry_after = float(decision.retry_after_seconds) if decision.retry_after_seconds else None
    if decision.exceeded == rpb.QUOTA_KIND_BUDGET:
        return RateLimitError(
            f"You exceeded your spending cap ({decision.quota}); it resets with its period.",
            code="insufficient_quota",
            retry_after=retry_after,
        )
    unit = "tokens" if decision.exceeded == rpb.QUOTA_KIND_TOKENS else "requests"
    return RateLimitError(
        f"Rate limit reached for {unit} ({decision.quota}): limit {decision.limit}, "
        f"remaining {decision.remaining}. Try again in {decision.retry_after_seconds}s.",
        code="rate_limit_exceeded",
        retry_after=retry_after,
    )


def duration(seconds: float) -> str:
    """Seconds as OpenAI writes reset times: 20ms, 1s, 6m0s, 1h0m0s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
