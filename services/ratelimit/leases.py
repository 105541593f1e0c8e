"""Quota leases: units an edge takes from the real buckets ahead of time, so it
admits requests locally instead of calling Check for each (RateLimitService.Lease).

The rule is an escrow after the demarcation protocol, exact by construction.
Per bucket the service keeps its balance and L, the sum of outstanding grants
(one per holder), with `balance + L <= capacity` at all times:

- a rate bucket (GCRA) refills only up to `capacity - L`: available is
  `capacity - max(tat - now, 0) / interval - L`; a grant does not move the TAT;
- a budget has `available = limit - max(spent, ledger floor) - held - L`;
- a grant is `min(want, floor(available / (other holders + 1)))`, 0 below one;
- used units are charged when reported, at the report time
  (`tat = max(tat, now) + used * interval`, or added to spent), and the rest of
  the old grant leaves L; a lease that expires unreported counts as fully used,
  charged at its expiry. Charging at the latest moment the units could have
  been spent is what keeps every window within `capacity + elapsed / interval`.

Buckets smaller than MIN_LEASABLE are never leased: each of their requests is
checked on its own, exactly as before leases existed. Every operation on a
scope (Check, Envoy's ShouldRateLimit, Settle, Lease) first reclaims expired
leases, so the per-request path sees `capacity - L` too.

This module maps the proto onto the backends' terms; the arithmetic is in
backends/memory.py and the Lua scripts.
"""

from __future__ import annotations

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from services.ratelimit.limiter import quota_reset_at
from services.ratelimit.policy import Floors, Rules, period_of_label, scopes_for
from services.ratelimit.quotas import NANO, Kind, LeaseClaim, LeaseOutcome, Quota, Scope

# The smallest buckets worth splitting: a lease of a bucket this size, shared by a
# few edges, still covers many requests each. Smaller ones (a 7/min key, a 50/min
# burst) stay exact per request: there a grant left unused on one edge while another
# refuses would be a visible share of the limit. Tokens: a few requests'
# reservations (prompt plus max_tokens). Budgets: one USD, a few dozen reservations.
MIN_LEASABLE = {Kind.REQUESTS: 256, Kind.TOKENS: 32_768, Kind.BUDGET: 1 * NANO}
SUBJECTS = frozenset({"key", "project"})


def shape(request: pb.CheckRequest, rules: Rules, floors: Floors, now: float) -> pb.ShapeBuckets:
    """Every bucket a request of this shape draws from, in the order Check takes them."""
    return pb.ShapeBuckets(
        buckets=[bucket(scope, quota) for scope in scopes_for(request, rules, floors, now) for quota in scope.quotas]
    )


def bucket(scope: Scope, quota: Quota) -> pb.Bucket:
    return pb.Bucket(
        scope=scope.name,
        counter=quota.counter,
        kind=pb.QuotaKind.ValueType(int(quota.kind)),
        name=quota.name,
        limit=quota.limit,
        interval_us=quota.interval_us,
        period_end=quota.period_end,
    )


def quota_of(b: pb.Bucket, floors: Floors) -> Quota | None:
    """The bucket as the backends count it, with this service's own ledger floor for a
    budget (never one a holder sent); None when the bucket is not one Lease hands out."""
    if int(b.kind) not in MIN_LEASABLE or b.limit <= 0 or not b.scope or not b.counter:
        return None
    kind = Kind(b.kind)
    if kind is not Kind.BUDGET:
        if b.interval_us <= 0 or b.counter.startswith("b:"):
            return None
        return Quota(b.name, kind, b.counter, b.limit, b.interval_us)
    subject, _, subject_id = b.scope.partition(":")
    label = b.counter.removeprefix("b:")
    if subject not in SUBJECTS or not subject_id or label == b.counter:
        return None
    try:
        period = period_of_label(label)
    except ValueError:
        return None
    return Quota(
        b.name,
        kind,
        b.counter,
        b.limit,
        floor=floors.floor(subject, subject_id, period),
        period_end=period.end,
    )


def leasable(quota: Quota) -> bool:
    return quota.limit >= MIN_LEASABLE[quota.kind]


def claim_of(claim: pb.LeaseClaim, quota: Quota) -> LeaseClaim:
    # An unleasable bucket still settles what its old lease used (a limit lowered
    # below the minimum), and takes nothing new.
    want = max(claim.want, 0) if leasable(quota) else 0
    return LeaseClaim(claim.bucket.scope, quota, claim.used, want)


def answer(claim: pb.LeaseClaim, quota: Quota | None, outcome: LeaseOutcome | None, now_us: int) -> pb.BucketLease:
    """The BucketLease for one claim; outcome None: not decided (bad bucket or backend down)."""
    b = claim.bucket
    granted = outcome.granted if outcome is not None else 0
    state = pb.QuotaState(
        name=b.name,
        kind=b.kind,
        limit=b.limit,
        allowed=granted > 0 or claim.want <= 0,
    )
    if quota is not None and outcome is not None:
        state.remaining = max(outcome.remaining, 0)
        state.reset_at = quota_reset_at(quota, outcome.reset_us, now_us)
    return pb.BucketLease(granted=granted, leasable=quota is not None and leasable(quota), state=state)


def result_label(claim: LeaseClaim | None, outcome: LeaseOutcome | None) -> str:
    """The metrics label of one answered claim."""
    if claim is None or not leasable(claim.quota):
        return "unleasable"
    if outcome is None:
        return "degraded"
    if claim.want <= 0:
        return "returned"
    return "granted" if outcome.granted > 0 else "empty"
