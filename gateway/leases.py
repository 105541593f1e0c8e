"""The renewer: one background task that keeps the lease book supplied. Each
round is one Lease call carrying every new request shape to resolve and every
claim due (renewals, give-backs), so many buckets renew together and no request
waits on it. A failed call leaves the book to per-request checks for a while."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import grpc

from gateway.lease_book import Claim, LeaseBook, Shape
from interlock.ratelimit.v1 import ratelimit_pb2 as rpb
from interlock.ratelimit.v1 import ratelimit_pb2_grpc
from services.common.clock import Clock

log = logging.getLogger(__name__)
LEASE_TIMEOUT_SECONDS = 2.0
# A round runs at least this often (leases come due with time alone) ...
TICK_SECONDS = 0.1
# ... and at most this often, however many requests ask for one.
MIN_ROUND_SECONDS = 0.01
# Giving everything back on shutdown must not hold the shutdown up.
GIVE_BACK_TIMEOUT_SECONDS = 1.0


def new_holder() -> str:
    """A holder id unique to this process start: the service keys its leases by it."""
    return "edge-" + secrets.token_hex(8)


class LeaseRenewer:
    def __init__(
        self, stub: ratelimit_pb2_grpc.RateLimitServiceAsyncStub, book: LeaseBook, clock: Clock, holder: str
    ) -> None:
        self._stub = stub
        self._book = book
        self._clock = clock
        self.holder = holder
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unimplemented_logged = False

    def wake(self) -> None:
        """Ask for a round soon (a request found no room, or a new shape)."""
        if self._task is None:
            # Started on first use: the client is built before the event loop serves requests.
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            self._wake.clear()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not stop leasing for good; requests fall back meanwhile.
                log.exception("lease round failed")
            await asyncio.sleep(MIN_ROUND_SECONDS)

    async def round(self) -> bool:
        """One Lease call for whatever is due; False when nothing was."""
        now = self._clock.monotonic()
        self._book.forget_idle(now)
        shapes = self._book.shapes_to_learn(now)
        claims = self._book.claims(now)
        if not shapes and not claims:
            return False
        await self._call(shapes, claims, LEASE_TIMEOUT_SECONDS)
        if shapes:
            # Newly resolved shapes want their first leases now, not a tick later.
            self._wake.set()
        return True

    async def close(self) -> None:
        """Stop renewing and give every lease back, so its units return at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        claims = self._book.give_back_all(self._clock.monotonic())
        if claims:
            await self._call([], claims, GIVE_BACK_TIMEOUT_SECONDS)

    async def _call(self, shapes: list[Shape], claims: list[Claim], deadline: float) -> None:
        request = rpb.LeaseRequest(
            holder=self.holder,
            shapes=[s.check for s in shapes],
            claims=[rpb.LeaseClaim(bucket=c.account.bucket, used=c.used, want=c.want) for c in claims],
        )
        # A lease's life counts from before the call: the service's clock starts later.
        sent_at = self._clock.monotonic()
        try:
            response: rpb.LeaseResponse = await self._stub.Lease(request, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            self._log_failure(exc)
            self._failed(shapes, claims)
            return
        now = self._clock.monotonic()
        if len(response.shapes) == len(shapes):
            for shape, buckets in zip(shapes, response.shapes, strict=True):
                self._book.learned(shape, buckets.buckets, now)
        else:
            for shape in shapes:
                self._book.not_learned(shape, now)
        if response.degraded or len(response.leases) != len(claims):
            self._book.failed(claims, now)
            return
        ttl = response.ttl_ms / 1000
        for claim, lease in zip(claims, response.leases, strict=True):
            self._book.granted(claim, lease, ttl, sent_at, now)

    def _failed(self, shapes: list[Shape], claims: list[Claim]) -> None:
        now = self._clock.monotonic()
        for shape in shapes:
            self._book.not_learned(shape, now)
        self._book.failed(claims, now)

    def _log_failure(self, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            # An older ratelimit service: every request is simply checked, as before leases.
            if not self._unimplemented_logged:
                self._unimplemented_logged = True
                log.warning("ratelimit does not grant leases; checking every request")
            return
        log.warning("Lease call failed (%s); checking requests one by one meanwhile", exc.code().name)
