"""The edge's quota leases: units the ratelimit service has already taken from its
buckets for this process, spent locally so most requests need no Check call.

Accounting, per bucket (an Account), stays exact by one rule: every unit granted
to this process counts as used (`pending`, what the next claim reports) from the
moment it arrives, except what is given back explicitly. A claim that renews a
live grant closes it: all of its room is given back in that claim except a small
hold that requests keep drawing on while the call is in flight; the hold's
leftover, room that dies unspent, and refunds that can no longer go back into a
live pool are reported as negative use later. A grant still live here is live at
the service too (it counts the lifetime from later), so giving room back in the
claim is safe; a grant that expired here unclaimed stays reported in full, which
is right whether or not the service has reclaimed it yet. The book does no I/O:
gateway.leases drives it over gRPC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from services.common.clock import Clock

REQUESTS, TOKENS, BUDGET = rpb.QUOTA_KIND_REQUESTS, rpb.QUOTA_KIND_TOKENS, rpb.QUOTA_KIND_BUDGET
# A lease is never used this close to its expiry (counted from before its Lease call was
# sent): covers a request admitted just before it and clock rate differences.
EXPIRY_MARGIN_SECONDS = 0.05
# The lease lifetime assumed before the service has said one.
DEFAULT_TTL_SECONDS = 1.0
# Wanted: about this many lease lifetimes of the demand seen, so a steady stream never
# runs dry between renewals.
DEMAND_LIFETIMES = 2.0
# The first grant is sized before any rate is known: wanted is at least this share of the
# bucket (the service still splits what is left among the holders).
MIN_WANT_SHARE = 64
# ... and at most this share of it.
MAX_WANT_SHARE = 4
# Demand is measured over at least this long, so one early request does not read as a flood.
DEMAND_MIN_WINDOW_SECONDS = 0.1
# After a grant of 0 (nothing left to lease), ask again no sooner than this.
EMPTY_BACKOFF_SECONDS = 0.25
# A bucket too small to split is asked about again after this long (its holders may change).
UNLEASABLE_RECHECK_SECONDS = 30.0
# After a failed Lease call: per-request checks for this long before trying again.
FAILURE_BACKOFF_SECONDS = 1.0
# Shapes and accounts unused this long are forgotten (client IPs come and go).
FORGET_AFTER_SECONDS = 120.0
# A renewed grant keeps this share of itself (at least two of the largest requests)
# for the requests admitted while the renewal is in flight.
HOLD_SHARE = 8

BucketKey = tuple[str, str, int, int, int, int]
ShapeKey = tuple[str, str]


def bucket_key(bucket: rpb.Bucket) -> BucketKey:
    # The whole definition: a changed limit or a new budget period is another account.
    return (bucket.scope, bucket.counter, bucket.kind, bucket.limit, bucket.interval_us, bucket.period_end)


@dataclass(slots=True)
class Pool:
    """One grant's room, usable until `expires` (monotonic seconds)."""

    room: int
    expires: float
    # A renewal claim has given back all but this pool's hold; dropped when it is answered.
    closing: bool = False


class Account:
    """This process's lease on one bucket, and what it knows of the bucket."""

    __slots__ = (
        "bucket",
        "demand",
        "demand_since",
        "grant",
        "granted_at",
        "in_flight",
        "kind",
        "largest",
        "last_demand",
        "leasable",
        "limit",
        "name",
        "not_before",
        "pending",
        "pools",
        "remaining",
        "reset_at",
        "ttl",
    )

    def __init__(self, bucket: rpb.Bucket, now: float) -> None:
        self.bucket = bucket
        self.kind = int(bucket.kind)
        self.name = bucket.name
        self.limit = bucket.limit
        # The bucket's free balance (all grants excluded) when last heard of, for headers.
        self.remaining = 0
        self.reset_at = 0
        self.pools: list[Pool] = []
        # Units to report used at the next claim (see the module docstring); may be negative.
        self.pending = 0
        # The newest grant: its size and when the call that brought it was sent.
        self.grant = 0
        self.granted_at = 0.0
        self.ttl = DEFAULT_TTL_SECONDS
        # Until the service says otherwise (it alone decides which buckets are too small to split).
        self.leasable = True
        # No claim before this (monotonic): backoff after an empty grant or a failure.
        self.not_before = 0.0 if self.leasable else math.inf
        self.in_flight = False
        # Units asked for since the last claim, for sizing the next one.
        self.demand = 0
        self.demand_since = now
        self.last_demand = now
        # The largest amount one request asked for: the least worth leasing.
        self.largest = 1

    def room(self, now: float) -> int:
        return sum(p.room for p in self.pools if p.expires > now)

    def pool_for(self, amount: int, now: float) -> Pool | None:
        # Oldest first: it dies soonest.
        for pool in self.pools:
            if pool.expires > now and pool.room >= amount:
                return pool
        return None

    def refund(self, pool: Pool, amount: int, now: float) -> None:
        # Counted as demand that was not needed: grants are sized on net use.
        self.demand = max(self.demand - amount, 0)
        if pool.expires > now and pool in self.pools:
            pool.room += amount
        else:
            # Its room is already reported (or about to be) as given back: never new room.
            self.pending -= amount

    def expire(self, now: float) -> None:
        """Drop dead pools; their unspent room is given back at the next claim."""
        if self.pools and self.pools[0].expires <= now:
            for pool in self.pools:
                if pool.expires <= now:
                    self.pending -= pool.room
            self.pools = [p for p in self.pools if p.expires > now]

    def close_pools(self, now: float) -> int:
        """For a renewal claim: give back the live pools' room but a hold; returns the units given back."""
        back = 0
        for pool in self.pools:
            if not pool.closing and pool.expires > now:
                hold = min(pool.room, max(2 * self.largest, self.grant // HOLD_SHARE))
                back += pool.room - hold
                pool.room = hold
                pool.closing = True
        return back

    def drop_closed(self) -> None:
        """The renewal was answered: what is left of the closed pools' holds is reported unused."""
        if any(p.closing for p in self.pools):
            self.pending -= sum(p.room for p in self.pools if p.closing)
            self.pools = [p for p in self.pools if not p.closing]

    def due(self, now: float) -> bool:
        """Wants a new grant: none usable, or the newest past half its life or half its room."""
        if not self.pools:
            return True
        newest = self.pools[-1]
        return now >= self.granted_at + self.ttl / 2 or newest.room * 2 < self.grant or self.room(now) < self.largest

    def want(self, now: float) -> int:
        window = max(now - self.demand_since, DEMAND_MIN_WINDOW_SECONDS)
        wanted = math.ceil(self.demand / window * self.ttl * DEMAND_LIFETIMES)
        # Never most of a bucket: an early burst (or a shape later found to be checked per
        # request) must not leave the other edges' checks with nothing.
        return max(
            min(wanted, self.limit // MAX_WANT_SHARE), min(self.largest, self.limit), self.limit // MIN_WANT_SHARE, 1
        )


@dataclass(slots=True)
class Shape:
    """One kind of request (a key with its limits, a client IP, an endpoint) and,
    once the service has said, the accounts each such request draws from."""

    check: rpb.CheckRequest
    needs_tokens: bool
    needs_usd: bool
    # None until the service has resolved the shape.
    accounts: tuple[Account, ...] | None = None
    requests: tuple[Account, ...] = ()
    tokens: tuple[Account, ...] = ()
    learning: bool = False
    not_before: float = 0.0
    last_seen: float = 0.0
    # Set when the book forgot the shape: whoever cached it makes a new one.
    forgotten: bool = False


@dataclass(slots=True)
class Take:
    """What one locally admitted request took, for settling."""

    pools: tuple[tuple[Account, Pool, int], ...]


@dataclass(slots=True)
class Claim:
    account: Account
    used: int
    want: int


@dataclass
class Headroom:
    """The tightest request and token accounts of a locally admitted request, for headers."""

    requests: tuple[str, int, int, int] | None = None
    tokens: tuple[str, int, int, int] | None = None


@dataclass
class LeaseBook:
    clock: Clock
    accounts: dict[BucketKey, Account] = field(default_factory=dict)
    shapes: list[Shape] = field(default_factory=list)
    # Shapes the service has not resolved yet.
    _to_learn: list[Shape] = field(default_factory=list)
    _forgotten_at: float = 0.0
    # Set by take() when a lease fell below half its grant: the renewer should run now.
    wanted: bool = False

    def add(self, shape: Shape) -> None:
        """A shape seen for the first time: resolved in the background; until then its
        requests are checked one by one."""
        self.shapes.append(shape)
        self._to_learn.append(shape)

    # The hot path: runs on every request, allocating only the Take it returns.
    def take(self, shape: Shape, tokens: int, nano: int, now: float) -> Take | None:
        """Take the request's amounts from every account's lease, or from none."""
        shape.last_seen = now
        accounts = shape.accounts
        if accounts is None:
            return None
        for account in accounts:
            if not account.leasable:
                # Checked per request for good (a bucket too small to split): no demand is
                # counted, so the shape's other buckets are not leased for it either.
                return None
        found = []
        ok = True
        for account in accounts:
            kind = account.kind
            amount = 1 if kind == REQUESTS else tokens if kind == TOKENS else nano
            account.demand += amount
            account.last_demand = now
            account.largest = max(account.largest, amount)
            pool = account.pool_for(amount, now) if ok else None
            if pool is None:
                ok = False
            else:
                found.append((account, pool, amount))
        if not ok:
            return None
        for account, pool, amount in found:
            pool.room -= amount
            if pool.room * 2 < account.grant and not account.in_flight:
                self.wanted = True
        return Take(tuple(found))

    def settle(self, take: Take, used_tokens: int | None, used_nano: int, now: float) -> None:
        """Refund what was reserved and not used; used_tokens None: the request failed,
        everything goes back (the request itself too). More than reserved is reported."""
        for account, pool, amount in take.pools:
            if used_tokens is None:
                back = amount
            elif account.kind == REQUESTS:
                continue
            else:
                back = amount - (used_tokens if account.kind == TOKENS else used_nano)
            if back > 0:
                account.refund(pool, back, now)
            elif back < 0:
                account.pending -= back

    def headroom(self, shape: Shape, now: float) -> Headroom:
        out = Headroom()
        for group, attr in ((shape.requests, "requests"), (shape.tokens, "tokens")):
            best: tuple[str, int, int, int] | None = None
            for account in group:
                left = account.remaining + account.room(now)
                if best is None or (left, account.limit) < (best[2], best[1]):
                    best = (account.name, account.limit, left, account.reset_at)
            setattr(out, attr, best)
        return out

    # Background: what the renewer sends, and what it does with the answer.
    def shapes_to_learn(self, now: float) -> list[Shape]:
        out = [s for s in self._to_learn if now >= s.not_before and not s.forgotten]
        self._to_learn = [s for s in self._to_learn if now < s.not_before and not s.forgotten]
        for shape in out:
            shape.learning = True
        return out

    def learned(self, shape: Shape, buckets: Iterable[rpb.Bucket], now: float) -> None:
        accounts = []
        for bucket in buckets:
            key = bucket_key(bucket)
            account = self.accounts.get(key)
            if account is None:
                account = self.accounts[key] = Account(bucket, now)
            accounts.append(account)
        shape.accounts = tuple(accounts)
        shape.requests = tuple(a for a in accounts if a.kind == REQUESTS)
        shape.tokens = tuple(a for a in accounts if a.kind == TOKENS)
        shape.learning = False

    def not_learned(self, shape: Shape, now: float) -> None:
        shape.learning = False
        shape.not_before = now + FAILURE_BACKOFF_SECONDS
        self._to_learn.append(shape)

    def claims(self, now: float) -> list[Claim]:
        """Renewals of the accounts due, and give-backs of the idle ones."""
        out: list[Claim] = []
        for account in self.accounts.values():
            account.expire(now)
            if account.in_flight:
                continue
            if now - account.last_demand > account.ttl:
                if account.pools or account.pending:
                    out.append(self._give_back(account))
                continue
            if now < account.not_before:
                continue
            if account.due(now):
                out.append(Claim(account, account.pending - account.close_pools(now), account.want(now)))
                account.pending = 0
                account.demand, account.demand_since = 0, now
                account.in_flight = True
        return out

    def give_back_all(self, now: float) -> list[Claim]:
        out = []
        for account in self.accounts.values():
            account.expire(now)
            if not account.in_flight and (account.pools or account.pending):
                out.append(self._give_back(account))
        return out

    def _give_back(self, account: Account) -> Claim:
        # Room still held is not used from now on, so it is not reported used.
        claim = Claim(account, account.pending - sum(p.room for p in account.pools), 0)
        account.pools = []
        account.pending = 0
        account.in_flight = True
        return claim

    def granted(self, claim: Claim, lease: rpb.BucketLease, ttl: float, sent_at: float, now: float) -> None:
        account = claim.account
        account.in_flight = False
        account.drop_closed()
        if lease.state.name:
            account.remaining = lease.state.remaining
            account.reset_at = lease.state.reset_at
        account.leasable = lease.leasable
        if not lease.leasable:
            account.not_before = now + UNLEASABLE_RECHECK_SECONDS
        if lease.granted > 0:
            account.pools.append(Pool(lease.granted, sent_at + ttl - EXPIRY_MARGIN_SECONDS))
            account.pending += lease.granted
            account.grant, account.granted_at, account.ttl = lease.granted, sent_at, ttl
        elif claim.want > 0 and lease.leasable:
            account.not_before = now + EMPTY_BACKOFF_SECONDS

    def failed(self, claims: Iterable[Claim], now: float) -> None:
        """The call failed or the service could not decide: it may or may not have
        counted what was reported. Report use again (at worst counted twice: under-admits),
        never a give-back again (counted twice it would over-admit)."""
        for claim in claims:
            claim.account.in_flight = False
            claim.account.pending += max(claim.used, 0)
            claim.account.drop_closed()
            claim.account.not_before = now + FAILURE_BACKOFF_SECONDS

    def forget_idle(self, now: float) -> None:
        """Drop shapes and accounts nobody used for a while and that hold nothing."""
        if now - self._forgotten_at < FORGET_AFTER_SECONDS / 4:
            return
        self._forgotten_at = now
        for shape in self.shapes:
            if now - shape.last_seen >= FORGET_AFTER_SECONDS:
                shape.forgotten = True
        self.shapes = [s for s in self.shapes if not s.forgotten]
        used = {id(a) for s in self.shapes for a in s.accounts or ()}
        self.accounts = {
            k: a
            for k, a in self.accounts.items()
            if id(a) in used or a.pools or a.pending or a.in_flight or now - a.last_demand < FORGET_AFTER_SECONDS
        }
