"""The edge's side of rate limiting: resolve a key's and its project's limits
from the cached catalog, admit from this process's quota leases when they have
room (gateway.lease_book), else ask ratelimit for this request (reserving tokens
and spend); turn the answer into headers or a 429, and settle afterwards."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from gateway import metrics
from gateway.estimate import Estimate
from gateway.lease_book import Headroom, LeaseBook, Shape, Take
from gateway.leases import LeaseRenewer, new_holder
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


NANO = 1_000_000_000


@dataclass
class Reservation:
    """What a request took, to settle when it ends: a check that reserved tokens or
    spend from the service, or (check None) what it took from this process's leases."""

    check: rpb.CheckRequest | None
    take: Take | None = None


@dataclass
class _KeyView:
    """A key's limits as its catalog records say (built once per record, not per
    request), and the shapes of its requests by endpoint and client IP. A changed key,
    plan or project record is a new view, so its requests are new shapes."""

    key: cpb.ApiKey
    plan: cpb.Plan | None
    project: cpb.Project | None
    key_limits: rpb.Limits
    project_limits: rpb.Limits
    needs_tokens: bool
    needs_usd: bool
    shapes: dict[str, dict[str, Shape]] = field(default_factory=dict)


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
        self._book = LeaseBook(clock)
        self._renewer = LeaseRenewer(stub, self._book, clock, new_holder())
        self._views: dict[str, _KeyView] = {}

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

    def _view(self, key: cpb.ApiKey, project_id: str) -> _KeyView:
        view = self._views.get(key.id)
        plan = self._cache.plans.get(key.plan or self._cache.default_plan)
        project = self._cache.projects.get(project_id)
        # Identity, not equality: the cache swaps in new records when anything changes.
        if view is None or view.key is not key or view.plan is not plan or view.project is not project:
            key_limits, project_limits = self.key_limits(key), self.project_limits(project_id)
            limits = (key_limits, project_limits)
            view = self._views[key.id] = _KeyView(
                key,
                plan,
                project,
                key_limits,
                project_limits,
                needs_tokens=any(lim.tokens_per_minute > 0 for lim in limits),
                needs_usd=any(lim.budget_usd > 0 for lim in limits),
            )
        return view

    def _shape(self, view: _KeyView, caller: pb.CallerContext) -> Shape:
        client_ip = caller.client_ip if self._ip_limits else ""
        by_ip = view.shapes.get(caller.endpoint)
        if by_ip is None:
            by_ip = view.shapes[caller.endpoint] = {}
        shape = by_ip.get(client_ip)
        if shape is None or shape.forgotten:
            check = rpb.CheckRequest(
                key_id=caller.key_id,
                project=caller.project,
                client_ip=client_ip,
                endpoint=caller.endpoint,
                key_limits=view.key_limits,
                project_limits=view.project_limits,
            )
            shape = by_ip[client_ip] = Shape(check, view.needs_tokens, view.needs_usd)
            self._book.add(shape)
            self._renewer.wake()
        return shape

    async def check(
        self, caller: pb.CallerContext, key: cpb.ApiKey, estimate: Callable[[], Estimate] | None
    ) -> Admission:
        """Admit from the leases when they have room for the request; else one Check
        for every quota that applies."""
        shape = self._shape(self._view(key, caller.project), caller)
        tokens, usd = 0, 0.0
        if estimate is not None and (shape.needs_tokens or shape.needs_usd):
            reserved = estimate()
            tokens = reserved.tokens
            usd = reserved.usd if shape.needs_usd else 0.0
        now = self._clock.monotonic()
        take = self._book.take(shape, max(tokens, 0), max(math.ceil(usd * NANO), 0), now)
        if take is not None:
            if self._book.wanted:
                self._book.wanted = False
                self._renewer.wake()
            metrics.ADMITTED_FROM_LEASE.inc()
            return Admission(self._local_headers(self._book.headroom(shape, now)), Reservation(None, take))
        if shape.accounts:
            # Asked for more than the leases hold: renew now rather than at the next tick.
            self._renewer.wake()
        check = rpb.CheckRequest()
        check.CopyFrom(shape.check)
        check.reservation_id = caller.request_id
        check.hold_seconds = self._hold_seconds
        check.reserve_tokens = tokens
        check.reserve_usd = usd
        try:
            decision: rpb.CheckResponse = await self._stub.Check(check, timeout=CHECK_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            metrics.CHECK_UNAVAILABLE.inc()
            if self._fail_open:
                log.warning("ratelimit unreachable (%s); admitting (fail open)", exc.code().name)
                return Admission([])
            return Admission([], refusal=_unavailable())
        if decision.degraded and not decision.allowed:
            metrics.CHECK_UNAVAILABLE.inc()
            return Admission([], refusal=_unavailable())
        headers = self.headers(decision)
        if not decision.allowed:
            metrics.REFUSED_BY_CHECK.inc()
            return Admission(headers, refusal=_refusal(decision))
        (metrics.CHECK_UNAVAILABLE if decision.degraded else metrics.ADMITTED_BY_CHECK).inc()
        settle = not decision.degraded and (shape.needs_tokens or shape.needs_usd)
        return Admission(headers, Reservation(check) if settle else None)

    def _local_headers(self, room: Headroom) -> Headers:
        """The same headers a Check answer gives, from the bucket states last heard of
        plus this process's own room (others' leases are not known here)."""
        requests = room.requests[1:] if room.requests is not None else None
        tokens = room.tokens[1:] if room.tokens is not None else None
        return rate_limit_headers(requests, requests, tokens, self._clock.now())

    def headers(self, decision: rpb.CheckResponse) -> Headers:
        def state(s: rpb.QuotaState) -> Account | None:
            return (s.limit, s.remaining, s.reset_at) if s.name else None

        tightest = (
            (decision.limit, decision.remaining, decision.reset_at) if decision.quota and decision.limit else None
        )
        return rate_limit_headers(tightest, state(decision.requests), state(decision.tokens), self._clock.now())

    def settle(self, reservation: Reservation | None, usage: pb.Usage | None) -> None:
        """Settle in the background with what the request used (nothing, when it failed)."""
        if reservation is None:
            return
        if reservation.take is not None:
            used_tokens, used_nano = None, 0
            if usage is not None:
                used_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
                used_nano = max(math.ceil(usage.cost_usd * NANO), 0)
            self._book.settle(reservation.take, used_tokens, used_nano, self._clock.monotonic())
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
        await self._renewer.close()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)


# (limit, remaining, reset at in unix seconds) of one bucket.
Account = tuple[int, int, int]


def rate_limit_headers(
    tightest: Account | None, requests: Account | None, tokens: Account | None, now: float
) -> Headers:
    """X-RateLimit-Limit/Remaining/Reset for the tightest quota, then OpenAI's own names per
    unit, resets as durations ("1s", "6m0s"): one shape whether a lease or a Check admitted."""
    out: Headers = []
    if tightest is not None:
        limit, left, reset_at = tightest
        out += [
            (b"x-ratelimit-limit", b"%d" % limit),
            (b"x-ratelimit-remaining", b"%d" % left),
            (b"x-ratelimit-reset", b"%d" % reset_at),
        ]
    for account, unit in ((requests, b"requests"), (tokens, b"tokens")):
        if account is not None:
            limit, left, reset_at = account
            out += [
                (b"x-ratelimit-limit-" + unit, b"%d" % limit),
                (b"x-ratelimit-remaining-" + unit, b"%d" % left),
                (b"x-ratelimit-reset-" + unit, duration(max(reset_at - now, 0)).encode()),
            ]
    return out


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
