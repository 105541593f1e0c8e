"""The quota model every backend enforces.

A *scope* is a subject that owns counters: an API key, a project, a client IP.
Each scope holds some *quotas*:

- requests and tokens are rate quotas, enforced with GCRA (a token bucket kept
  as one timestamp, the theoretical arrival time): `limit` is the bucket's
  capacity and one unit drips back every `interval_us` microseconds;
- a budget is a spend counter in millionths of a USD for a period, with
  reservations held until settled (or until they lapse).

A check takes `amount` from every quota of every scope, or from none. A lease
takes units of one quota ahead of time for one holder (an edge), under the escrow
rule of services.ratelimit.leases; checks keep room for outstanding grants. Times
are integers in microseconds, passed in by the caller so that tests inject them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MICRO = 1_000_000
# Budgets count billionths of a USD: per-request rounding stays far below any real price.
NANO = 1_000_000_000
MINUTE_US = 60 * MICRO


class Kind(enum.IntEnum):
    # Values are the proto's QuotaKind numbers.
    REQUESTS = 1
    TOKENS = 2
    BUDGET = 3


@dataclass(frozen=True, slots=True)
class Quota:
    # Public name, such as key:requests or ip:chat:requests.
    name: str
    kind: Kind
    # Counter name inside its scope, such as r, r:chat, t or b:2026-11.
    counter: str
    # Capacity (requests, tokens) or cap (budget, nano-USD).
    limit: int
    # Rate quotas: microseconds for one unit to drip back. 0 for budgets.
    interval_us: int = 0
    # What this check takes.
    amount: int = 0
    # Budgets: what the usage ledger says was already spent (nano-USD); the
    # counter never reads lower, so a lost counter rebuilds itself.
    floor: int = 0
    # Budgets: Unix seconds when the period ends (0: never), so counters expire.
    period_end: int = 0

    @staticmethod
    def rate(name: str, kind: Kind, counter: str, *, per_minute: int, capacity: int, amount: int) -> Quota:
        # Interval rounded down: never slower than the configured rate.
        return Quota(name, kind, counter, capacity, max(MINUTE_US // per_minute, 1), amount)


@dataclass(frozen=True, slots=True)
class Scope:
    # Such as key:k_123, project:search, ip:10.0.0.1. Also the Redis hash tag.
    name: str
    quotas: tuple[Quota, ...]


@dataclass(frozen=True, slots=True)
class QuotaOutcome:
    quota: Quota
    allowed: bool
    # Units left after this decision.
    remaining: int
    # Microseconds until the quota is full again (rate quotas).
    reset_us: int
    # Microseconds until this check's amount would fit (0 when allowed).
    retry_us: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    outcomes: tuple[QuotaOutcome, ...]


@dataclass(frozen=True, slots=True)
class LeaseClaim:
    """One holder's claim on one bucket (a quota of a scope), see services.ratelimit.leases."""

    scope: str
    # The bucket; amount is unused, floor is the ledger's (budgets).
    quota: Quota
    # Units used of the previous grant since the last report, net of refunds.
    used: int
    # Units wanted now; 0 gives the lease back.
    want: int


@dataclass(frozen=True, slots=True)
class LeaseOutcome:
    granted: int
    # Units left for everyone else after this grant (grants excluded).
    remaining: int
    # Microseconds until the bucket is full again, counting its grants as used (rate quotas).
    reset_us: int


@dataclass(frozen=True, slots=True)
class LeaseResult:
    outcomes: tuple[LeaseOutcome, ...]
    # When the grants lapse, on the backend's clock (Redis' own for Redis), µs.
    expires_us: int


class Backend(Protocol):
    """Counters behind one interface: in memory, or shared through Redis."""

    name: str

    async def acquire(self, scopes: Sequence[Scope], reservation_id: str, now_us: int, hold_us: int) -> Decision:
        """Take every quota's amount, in every scope, or none; hold the tokens
        and budget taken under reservation_id until settled or hold_us passes."""
        ...

    async def settle(
        self, scopes: Sequence[Scope], reservation_id: str, now_us: int, used_tokens: int, used_nano: int
    ) -> bool:
        """Replace the held reservation with what was used. False when it had
        lapsed or was already settled."""
        ...

    async def release(self, scopes: Sequence[Scope], reservation_id: str, now_us: int) -> bool:
        """Give back everything the reservation took, the request itself included."""
        ...

    async def lease(self, claims: Sequence[LeaseClaim], holder: str, now_us: int, ttl_us: int) -> LeaseResult:
        """For each claim in order: charge `used` and return the rest of the holder's
        previous grant on that bucket, then grant anew (the escrow rule in
        services.ratelimit.leases). Atomic per scope; expired leases are reclaimed first."""
        ...

    async def close(self) -> None: ...


class BackendUnavailableError(Exception):
    """The backend could not decide (Redis unreachable, timed out, ...)."""
