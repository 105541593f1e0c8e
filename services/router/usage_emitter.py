"""Sends usage events to the usage service in batches, off the request path.

emit() only appends to memory, so a request never waits on the ledger. A
background task sends batches by size or time. When a send fails, that batch
and everything queued behind it move to a durable local spool; while the
spool holds anything, newer events join it at the back, and the task replays
it oldest first, with capped backoff, until it is empty. A spooled event is
deleted only after RecordEvents succeeded; resending after an unknown outcome
is safe because RecordEvents skips request ids it already holds. Shutdown
delivers what it can in the time it has and spools the rest, which the next
start replays before anything new.

The machinery is generic (SpoolingEmitter); UsageEmitter delivers UsageEvents with
RecordEvents, and services.router.evaluation.score_emitter delivers evaluation
scores the same way with RecordScores, from a spool file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import ClassVar, Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc
from services.common.spool import Spool, SpoolEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", pb.UsageEvent, pb.QualityScore)

PENDING_EVENTS = Gauge("interlock_usage_pending_events", "Usage events held in memory, not yet delivered.")
SPOOL_EVENTS = Gauge("interlock_usage_spool_events", "Usage events in the local spool, waiting to be replayed.")
SPOOLED_EVENTS = Counter("interlock_usage_events_spooled", "Usage events written to the local spool.")
REPLAYED_EVENTS = Counter("interlock_usage_events_replayed", "Spooled usage events delivered to the usage service.")
DEAD_LETTERED_EVENTS = Counter(
    "interlock_usage_events_dead_lettered", "Usage events the usage service rejected as invalid, set aside."
)

# Memory holds at most this many batches while the usage service is slow; the rest goes to the spool.
HIGH_WATER_BATCHES = 10


class SpoolingEmitter(Generic[M]):
    """Batches items of one message type to the usage service, spooling what it cannot deliver."""

    # What the items are called in logs ("usage events"; "events"; the "usage" spool); the
    # metrics the subclass counts them in.
    what: ClassVar[str] = "items"
    noun: ClassVar[str] = "items"
    spool_name: ClassVar[str] = "local"
    pending_gauge: ClassVar[Gauge]
    spool_gauge: ClassVar[Gauge]
    spooled_counter: ClassVar[Counter]
    replayed_counter: ClassVar[Counter]
    dead_lettered_counter: ClassVar[Counter]

    def decode(self, payload: bytes) -> M:
        raise NotImplementedError

    def ident(self, item: M) -> str:
        """The id logs name a rejected item by."""
        raise NotImplementedError

    async def call(self, items: Sequence[M], timeout_seconds: float) -> None:
        """Deliver one batch; raises grpc.aio.AioRpcError when it was not taken."""
        raise NotImplementedError

    def __init__(
        self,
        channel: grpc.aio.Channel,
        spool: Spool,
        *,
        batch_size: int,
        flush_seconds: float,
        max_backoff_seconds: float = 2.0,
        rpc_timeout_seconds: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self._stub = usage_pb2_grpc.UsageServiceStub(channel)
        self._spool = spool
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._max_backoff = max_backoff_seconds
        self._rpc_timeout = rpc_timeout_seconds
        self._high_water = HIGH_WATER_BATCHES * batch_size
        self._pending: deque[M] = deque()
        # The batch being sent from memory, and whether the spool already holds a copy of it.
        self._inflight: list[M] = []
        self._inflight_spooled = False
        self._wake = asyncio.Event()
        self._overflow = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spilling: asyncio.Task[None] | None = None
        self._closed = False
        # Since the spool last emptied: whether a send failed, and how many events were replayed.
        self._outage = False
        self._replayed = 0

    @property
    def pending(self) -> int:
        """Events only in memory: lost if the process died now."""
        return len(self._pending) + (0 if self._inflight_spooled else len(self._inflight))

    @property
    def spooled(self) -> int:
        return self._spool.count

    def emit(self, event: M) -> None:
        if self._closed:
            self._emit_after_close(event)
            return
        self._pending.append(event)
        if len(self._pending) >= self._batch_size:
            self._wake.set()
        if len(self._pending) > self._high_water:
            self._overflow.set()

    def start(self) -> None:
        # Read at scrape time, so emit() pays nothing for them. One emitter per process.
        self.pending_gauge.set_function(lambda: self.pending)
        self.spool_gauge.set_function(lambda: self._spool.count)
        if self._spool.count:
            log.info("replaying %d %s spooled in %s before new ones", self._spool.count, self.what, self._spool.path)
        self._task = asyncio.create_task(self._run(), name="usage-emitter")

    async def close(self, wait_seconds: float) -> None:
        """Deliver for up to wait_seconds, then write whatever is undelivered to the spool."""
        if self._closed:
            return
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wait({self._task}), wait_seconds)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._spilling is not None:
            await asyncio.gather(self._spilling, return_exceptions=True)
        left = self.pending
        try:
            while self.pending:
                await self._spill()
        except Exception:  # the other cleanups must still run
            log.exception("could not spool %d %s at shutdown; they are lost", self.pending, self.what)
        # From here on no task is left to flush; a late event goes straight to the spool.
        self._closed = True
        if left:
            log.warning("wrote %d undelivered %s to the spool at shutdown", left - self.pending, self.what)
        if self._spool.count:
            log.warning("%d %s wait in %s; the next start replays them", self._spool.count, self.what, self._spool.path)

    def _emit_after_close(self, event: M) -> None:
        # Only during shutdown (a handler finishing late), so blocking on the disk is acceptable.
        try:
            self._spool.append([event.SerializeToString()])
        except Exception:  # emit never raises into a request handler
            log.exception("%s %s emitted after the spool closed; it is lost", self.what, self.ident(event))
            return
        self.spooled_counter.inc()

    async def _run(self) -> None:
        delay = self._flush_seconds
        while True:
            if not self._spool.count and not self._stopping.is_set():
                await self._wait_for_batch()
            try:
                delivered = await self._deliver()
            except Exception:  # e.g. a disk error; the task must outlive it and retry
                log.exception("%s emitter failed; retrying", self.what)
                delivered = False
            if delivered:
                delay = self._flush_seconds
                if self._stopping.is_set() and not self.pending and not self._spool.count:
                    return
                continue
            if self._stopping.is_set():
                return  # the failed events are in the spool already; close() spools the rest
            await self._pause(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _wait_for_batch(self) -> None:
        if len(self._pending) < self._batch_size:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await self._watch_overflow(asyncio.wait_for(self._stopping.wait(), seconds))

    async def _deliver(self) -> bool:
        if not self._spool.count and not await self._flush_memory():
            return False
        return await self._replay() if self._spool.count else True

    async def _flush_memory(self) -> bool:
        if self._inflight and not self._inflight_spooled:
            # Left by a round that failed part-way (a disk error while spilling): it goes first again.
            self._pending.extendleft(reversed(self._inflight))
        self._inflight = []
        while self._pending and not self._spool.count:
            self._inflight = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
            self._inflight_spooled = False
            error = await self._send(self._inflight)
            if error is not None:
                await self._spill()  # the failed batch first, then everything behind it
            self._inflight = []
            if error is not None:
                self._note_failure(error)
                # A rejected batch is replayed from the spool at once, which sets the bad events aside.
                return error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return True

    async def _replay(self) -> bool:
        while True:
            await self._spill()  # newer events queue behind the spooled ones
            entries = await asyncio.to_thread(self._spool.peek, self._batch_size)
            if not entries:
                if self._outage or self._replayed:
                    log.info(
                        "%s spool drained (%d %s replayed); delivering from memory again",
                        self.spool_name,
                        self._replayed,
                        self.noun,
                    )
                self._outage, self._replayed = False, 0
                return True
            if not await self._replay_batch(entries):
                return False

    async def _replay_batch(self, entries: Sequence[SpoolEntry]) -> bool:
        events = []
        for entry in entries:
            try:
                events.append(self.decode(entry.payload))
            except DecodeError:
                await self._bury(entry, f"spooled payload is not one of the {self.what}")
                return True
        error = await self._send(events)
        if error is None:
            await asyncio.to_thread(self._spool.ack, [e.seq for e in entries])
            self.replayed_counter.inc(len(entries))
            self._replayed += len(entries)
            return True
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            self._note_failure(error)
            return False
        if len(entries) > 1:
            # Halve until the bad events are alone, so the good ones around them still get delivered.
            half = len(entries) // 2
            return await self._replay_batch(entries[:half]) and await self._replay_batch(entries[half:])
        await self._bury(entries[0], f"{error.code().name}: {error.details()}", self.ident(events[0]))
        return True

    async def _bury(self, entry: SpoolEntry, error: str, request_id: str = "") -> None:
        await asyncio.to_thread(self._spool.bury, [entry.seq], error)
        self.dead_lettered_counter.inc()
        log.error(
            "one of the %s (%s) rejected (%s); moved to the dead-letter table of %s",
            self.what,
            request_id or f"#{entry.seq}",
            error,
            self._spool.path,
        )

    async def _send(self, events: Sequence[M]) -> grpc.aio.AioRpcError | None:
        try:
            await self._watch_overflow(self.call(events, self._rpc_timeout))
        except grpc.aio.AioRpcError as exc:
            return exc
        return None

    async def _watch_overflow(self, work: Awaitable[T]) -> T:
        """Await work; if memory passes the high-water mark meanwhile, spill it to the spool."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                overflow = asyncio.ensure_future(self._overflow.wait())
                try:
                    await asyncio.wait({task, overflow}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    overflow.cancel()
                if task.done():
                    return task.result()
                await self._spill()
        finally:
            task.cancel()

    async def _spill(self) -> None:
        """Move what memory holds to the back of the spool: the batch in flight, then the queue."""
        self._overflow.clear()
        head = [] if self._inflight_spooled else list(self._inflight)
        tail = list(self._pending)
        if not head and not tail:
            return
        # Shielded: once the rows are committed, memory must drop them even if we are cancelled meanwhile.
        self._spilling = asyncio.ensure_future(self._spill_io(head, tail))
        await asyncio.shield(self._spilling)

    async def _spill_io(self, head: list[M], tail: list[M]) -> None:
        await asyncio.to_thread(self._spool.append, [e.SerializeToString() for e in (*head, *tail)])
        for _ in tail:
            self._pending.popleft()
        if head:
            self._inflight_spooled = True
        self.spooled_counter.inc(len(head) + len(tail))

    def _note_failure(self, error: grpc.aio.AioRpcError) -> None:
        if not self._outage:
            log.warning(
                "usage service did not take %s (%s: %s); spooling them to %s until it does",
                self.noun,
                error.code().name,
                error.details(),
                self._spool.path,
            )
            self._outage = True


class UsageEmitter(SpoolingEmitter[pb.UsageEvent]):
    """Usage events, delivered with RecordEvents (which skips request ids it holds)."""

    what = "usage events"
    noun = "events"
    spool_name = "usage"
    pending_gauge = PENDING_EVENTS
    spool_gauge = SPOOL_EVENTS
    spooled_counter = SPOOLED_EVENTS
    replayed_counter = REPLAYED_EVENTS
    dead_lettered_counter = DEAD_LETTERED_EVENTS

    def decode(self, payload: bytes) -> pb.UsageEvent:
        return pb.UsageEvent.FromString(payload)

    def ident(self, item: pb.UsageEvent) -> str:
        return item.request_id

    async def call(self, items: Sequence[pb.UsageEvent], timeout_seconds: float) -> None:
        await self._stub.RecordEvents(pb.RecordEventsRequest(events=items), timeout=timeout_seconds)
