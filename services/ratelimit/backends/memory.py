"""In-process counters: the embedded default, exact for one replica.

The same arithmetic as the Redis scripts (backends/*.lua); the contract tests
run both against one suite. Nothing here awaits, so each call is atomic on the
event loop. Leases follow the escrow rule of services.ratelimit.leases.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.ratelimit.quotas import (
    MICRO,
    Decision,
    Kind,
    LeaseClaim,
    LeaseOutcome,
    LeaseResult,
    Quota,
    QuotaOutcome,
    Scope,
)

# Sweep idle counters once this many scopes exist, so memory stays bounded.
SWEEP_AT = 50_000


@dataclass
class _Hold:
    expires_us: int
    # (counter, kind, interval_us, amount)
    items: list[tuple[str, Kind, int, int]]


@dataclass
class _Lease:
    kind: Kind
    interval_us: int
    granted: int
    expires_us: int


@dataclass
class _ScopeState:
    # Rate counters: counter -> theoretical arrival time (µs).
    tats: dict[str, int] = field(default_factory=dict)
    # Budget counters: counter -> [spent, held] (nano-USD), and their period end (s).
    budgets: dict[str, list[int]] = field(default_factory=dict)
    budget_ends: dict[str, int] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    expiries: list[tuple[int, str]] = field(default_factory=list)
    # Outstanding grants: counter -> holder -> lease, their sum per counter (L), and
    # (expiry, counter, holder) in expiry order.
    leases: dict[str, dict[str, _Lease]] = field(default_factory=dict)
    lent: dict[str, int] = field(default_factory=dict)
    lease_expiries: list[tuple[int, str, str]] = field(default_factory=list)

    def purge(self, now_us: int) -> None:
        """Lapse expired holds and reclaim expired leases: every operation starts here."""
        while self.expiries and self.expiries[0][0] <= now_us:
            expires_us, rid = heapq.heappop(self.expiries)
            hold = self.holds.get(rid)
            if hold is None or hold.expires_us != expires_us:
                continue
            del self.holds[rid]
            for counter, kind, _, amount in hold.items:
                if kind is Kind.BUDGET and counter in self.budgets:
                    self.budgets[counter][1] -= amount
        while self.lease_expiries and self.lease_expiries[0][0] <= now_us:
            expires_us, counter, holder = heapq.heappop(self.lease_expiries)
            lease = self.leases.get(counter, {}).get(holder)
            if lease is None or lease.expires_us != expires_us:
                continue  # renewed or given back since
            # Never reported: counted as fully used, at the last moment it could have been.
            self.end_lease(counter, holder)
            self.charge(counter, lease.kind, lease.interval_us, lease.granted, at_us=expires_us)

    def end_lease(self, counter: str, holder: str) -> _Lease | None:
        lease = self.leases.get(counter, {}).pop(holder, None)
        if lease is not None:
            self.lent[counter] -= lease.granted
            if not self.leases[counter]:
                del self.leases[counter], self.lent[counter]
        return lease

    def charge(self, counter: str, kind: Kind, interval_us: int, used: int, *, at_us: int, floor: int = 0) -> None:
        """Count units a holder used (negative: refunded) as spent at at_us."""
        if used == 0:
            return
        if kind is Kind.BUDGET:
            budget = self.budgets.setdefault(counter, [0, 0])
            budget[0] = max(max(budget[0], floor) + used, floor)
            return
        self.tats[counter] = rate_adjust(self.tats.get(counter, at_us), at_us, used, interval_us)

    def idle(self, now_us: int) -> bool:
        self.tats = {c: t for c, t in self.tats.items() if t > now_us}
        for counter, end in list(self.budget_ends.items()):
            if end and end * MICRO <= now_us:
                del self.budgets[counter], self.budget_ends[counter]
        return not (self.tats or self.budgets or self.holds or self.leases)


def evaluate(
    quota: Quota, now_us: int, tat: int | None, budget: list[int] | None, lent: int = 0
) -> tuple[bool, int, int, int, int]:
    """(fits, remaining if taken, remaining now, reset µs if taken / now, retry µs).
    lent: the bucket's outstanding grants, which it must keep room for."""
    if quota.kind is Kind.BUDGET:
        spent = max(budget[0] if budget else 0, quota.floor)
        held = budget[1] if budget else 0
        left = quota.limit - spent - held - lent
        fits = quota.amount <= left
        reset = max(quota.period_end * MICRO - now_us, 0) if quota.period_end else 0
        return fits, left - quota.amount, left, reset, 0 if fits else reset
    interval = quota.interval_us
    # The bucket refills only up to its capacity less what is lent out.
    capacity = (quota.limit - lent) * interval
    base = max(tat if tat is not None else now_us, now_us)
    new_tat = base + quota.amount * interval
    fits = new_tat - now_us <= capacity
    taken_remaining = (capacity - (new_tat - now_us)) // interval
    now_remaining = max((capacity - (base - now_us)) // interval, 0)
    reset = new_tat - now_us if fits else base - now_us
    return fits, taken_remaining, now_remaining, reset, 0 if fits else new_tat - now_us - capacity


def grant_size(want: int, available: int, others: int) -> int:
    """The escrow's grant: at most an equal share of what is left among the holders."""
    if want <= 0 or available <= 0:
        return 0
    return min(want, available // (others + 1))


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._scopes: dict[str, _ScopeState] = {}

    async def acquire(self, scopes: Sequence[Scope], reservation_id: str, now_us: int, hold_us: int) -> Decision:
        if len(self._scopes) > SWEEP_AT:
            self._sweep(now_us)
        states = [self._scopes.setdefault(scope.name, _ScopeState()) for scope in scopes]
        evaluated: list[tuple[Quota, _ScopeState, tuple[bool, int, int, int, int]]] = []
        for scope, state in zip(scopes, states, strict=True):
            state.purge(now_us)
            for quota in scope.quotas:
                c = quota.counter
                result = evaluate(quota, now_us, state.tats.get(c), state.budgets.get(c), state.lent.get(c, 0))
                evaluated.append((quota, state, result))
        allowed = all(result[0] for _, _, result in evaluated)
        outcomes = tuple(
            QuotaOutcome(
                quota,
                fits,
                taken_remaining if allowed else now_remaining,
                reset,
                retry,
            )
            for quota, _, (fits, taken_remaining, now_remaining, reset, retry) in evaluated
        )
        if allowed:
            for scope, state in zip(scopes, states, strict=True):
                self._take(scope, state, reservation_id, now_us, hold_us)
        return Decision(allowed, outcomes)

    def _take(self, scope: Scope, state: _ScopeState, rid: str, now_us: int, hold_us: int) -> None:
        items: list[tuple[str, Kind, int, int]] = []
        for quota in scope.quotas:
            if quota.kind is Kind.BUDGET:
                budget = state.budgets.setdefault(quota.counter, [0, 0])
                budget[0] = max(budget[0], quota.floor)
                budget[1] += quota.amount
                state.budget_ends[quota.counter] = quota.period_end
            else:
                base = max(state.tats.get(quota.counter, now_us), now_us)
                state.tats[quota.counter] = base + quota.amount * quota.interval_us
            items.append((quota.counter, quota.kind, quota.interval_us, quota.amount))
        hold = _Hold(now_us + hold_us, items)
        state.holds[rid] = hold
        heapq.heappush(state.expiries, (hold.expires_us, rid))

    async def settle(
        self, scopes: Sequence[Scope], reservation_id: str, now_us: int, used_tokens: int, used_nano: int
    ) -> bool:
        return self._finish(scopes, reservation_id, now_us, (used_tokens, used_nano))

    async def release(self, scopes: Sequence[Scope], reservation_id: str, now_us: int) -> bool:
        return self._finish(scopes, reservation_id, now_us, None)

    def _finish(self, scopes: Sequence[Scope], rid: str, now_us: int, used: tuple[int, int] | None) -> bool:
        """Settle with used (tokens, nano-USD), or release everything when used is None."""
        found = False
        for scope in scopes:
            state = self._scopes.get(scope.name)
            if state is None:
                continue
            state.purge(now_us)
            hold = state.holds.pop(rid, None)
            if hold is None:
                continue
            found = True
            for counter, kind, interval, amount in hold.items:
                if kind is Kind.BUDGET:
                    budget = state.budgets.setdefault(counter, [0, 0])
                    budget[1] -= amount
                    budget[0] += used[1] if used is not None else 0
                    continue
                if kind is Kind.REQUESTS and used is not None:
                    continue  # a request that ran counts, whatever it used
                delta = (used[0] if used is not None else 0) - amount
                state.tats[counter] = rate_adjust(state.tats.get(counter, now_us), now_us, delta, interval)
        return found

    async def lease(self, claims: Sequence[LeaseClaim], holder: str, now_us: int, ttl_us: int) -> LeaseResult:
        if len(self._scopes) > SWEEP_AT:
            self._sweep(now_us)
        expires_us = now_us + ttl_us
        touched: set[str] = set()
        outcomes = []
        for claim in claims:
            state = self._scopes.setdefault(claim.scope, _ScopeState())
            if claim.scope not in touched:
                touched.add(claim.scope)
                state.purge(now_us)
            outcomes.append(self._claim(state, claim, holder, now_us, expires_us))
        return LeaseResult(tuple(outcomes), expires_us)

    def _claim(self, state: _ScopeState, claim: LeaseClaim, holder: str, now_us: int, expires_us: int) -> LeaseOutcome:
        quota, counter = claim.quota, claim.quota.counter
        previous = state.end_lease(counter, holder)
        # Used units of a live lease are charged now; without one (it expired and was
        # reclaimed as fully used) only refunds still apply.
        used = claim.used if previous is not None else min(claim.used, 0)
        state.charge(counter, quota.kind, quota.interval_us, used, at_us=now_us, floor=quota.floor)
        if quota.kind is Kind.BUDGET:
            state.budgets.setdefault(counter, [0, 0])
            state.budget_ends[counter] = quota.period_end
        lent = state.lent.get(counter, 0)
        _, _, available, _, _ = evaluate(quota, now_us, state.tats.get(counter), state.budgets.get(counter), lent)
        granted = grant_size(claim.want, available, len(state.leases.get(counter, {})))
        if granted > 0:
            state.leases.setdefault(counter, {})[holder] = _Lease(quota.kind, quota.interval_us, granted, expires_us)
            state.lent[counter] = lent + granted
            heapq.heappush(state.lease_expiries, (expires_us, counter, holder))
        return LeaseOutcome(granted, available - granted, _lease_reset(quota, state, now_us))

    def _sweep(self, now_us: int) -> None:
        self._scopes = {name: state for name, state in self._scopes.items() if not state.idle(now_us)}

    async def close(self) -> None:
        return None


def _lease_reset(quota: Quota, state: _ScopeState, now_us: int) -> int:
    if quota.kind is Kind.BUDGET:
        return max(quota.period_end * MICRO - now_us, 0) if quota.period_end else 0
    tat = state.tats.get(quota.counter, now_us)
    return max(tat - now_us, 0) + state.lent.get(quota.counter, 0) * quota.interval_us


def rate_adjust(tat: int, now_us: int, delta: int, interval_us: int) -> int:
    """Move a rate counter by delta units: a refund never fills past full,
    extra use is owed even beyond capacity."""
    if delta < 0:
        return max(tat + delta * interval_us, now_us)
    return max(tat, now_us) + delta * interval_us
