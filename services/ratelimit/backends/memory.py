"""In-process counters: the embedded default, exact for one replica.

The same arithmetic as the Redis scripts (backends/redis_scripts.lua); the
contract tests run both against one suite. Nothing here awaits, so each call
is atomic on the event loop.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.ratelimit.quotas import MICRO, Decision, Kind, Quota, QuotaOutcome, Scope

# Sweep idle counters once this many scopes exist, so memory stays bounded.
SWEEP_AT = 50_000


@dataclass
class _Hold:
    expires_us: int
    # (counter, kind, interval_us, amount)
    items: list[tuple[str, Kind, int, int]]


@dataclass
class _ScopeState:
    # Rate counters: counter -> theoretical arrival time (µs).
    tats: dict[str, int] = field(default_factory=dict)
    # Budget counters: counter -> [spent, held] (nano-USD), and their period end (s).
    budgets: dict[str, list[int]] = field(default_factory=dict)
    budget_ends: dict[str, int] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    expiries: list[tuple[int, str]] = field(default_factory=list)

    def purge(self, now_us: int) -> None:
        while self.expiries and self.expiries[0][0] <= now_us:
            expires_us, rid = heapq.heappop(self.expiries)
            hold = self.holds.get(rid)
            if hold is None or hold.expires_us != expires_us:
                continue
            del self.holds[rid]
            for counter, kind, _, amount in hold.items:
                if kind is Kind.BUDGET and counter in self.budgets:
                    self.budgets[counter][1] -= amount

    def idle(self, now_us: int) -> bool:
        self.tats = {c: t for c, t in self.tats.items() if t > now_us}
        for counter, end in list(self.budget_ends.items()):
            if end and end * MICRO <= now_us:
                del self.budgets[counter], self.budget_ends[counter]
        return not (self.tats or self.budgets or self.holds)


def evaluate(quota: Quota, now_us: int, tat: int | None, budget: list[int] | None) -> tuple[bool, int, int, int, int]:
    """(fits, remaining if taken, remaining now, reset µs if taken / now, retry µs)."""
    if quota.kind is Kind.BUDGET:
        spent = max(budget[0] if budget else 0, quota.floor)
        held = budget[1] if budget else 0
        left = quota.limit - spent - held
        fits = quota.amount <= left
        reset = max(quota.period_end * MICRO - now_us, 0) if quota.period_end else 0
        return fits, left - quota.amount, left, reset, 0 if fits else reset
    interval = quota.interval_us
    capacity = quota.limit * interval
    base = max(tat if tat is not None else now_us, now_us)
    new_tat = base + quota.amount * interval
    fits = new_tat - now_us <= capacity
    taken_remaining = (capacity - (new_tat - now_us)) // interval
    now_remaining = max((capacity - (base - now_us)) // interval, 0)
    reset = new_tat - now_us if fits else base - now_us
    return fits, taken_remaining, now_remaining, reset, 0 if fits else new_tat - now_us - capacity


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
                result = evaluate(quota, now_us, state.tats.get(quota.counter), state.budgets.get(quota.counter))
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

    def _sweep(self, now_us: int) -> None:
        self._scopes = {name: state for name, state in self._scopes.items() if not state.idle(now_us)}

    async def close(self) -> None:
        return None


def rate_adjust(tat: int, now_us: int, delta: int, interval_us: int) -> int:
    """Move a rate counter by delta units: a refund never fills past full,
    extra use is owed even beyond capacity."""
    if delta < 0:
        return max(tat + delta * interval_us, now_us)
    return max(tat, now_us) + delta * interval_us
