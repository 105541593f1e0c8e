"""The usage emitter against a real in-process usage service that we can make
fail, slow down or reject events: delivery, spool and replay, shutdown, poison."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from interlock.usage.v1 import usage_pb2 as pb
from services.common.spool import Spool
from services.router.settings import RouterSettings
from services.router.usage_emitter import HIGH_WATER_BATCHES, UsageEmitter

TIMEOUT = 5.0
SERVICE = pb.DESCRIPTOR.services_by_name["UsageService"].full_name


class Ledger:
    """RecordEvents only: stores like the real service (known request ids are skipped),
    and fails, hangs or rejects events when told to."""

    def __init__(self) -> None:
        self.addr = ""
        self.stored: list[str] = []  # request ids in the order they were first stored
        self.received: list[str] = []  # every id of every accepted call, duplicates included
        self.batches: list[int] = []
        self.calls = 0
        self.fail_with: grpc.StatusCode | None = None
        self.poison: set[str] = set()
        self.gate = asyncio.Event()  # cleared: calls wait, as with a slow database
        self.gate.set()

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RecordEventsResponse:
        self.calls += 1
        if self.fail_with is not None:
            await context.abort(self.fail_with, "ledger_unavailable")
        bad = [e.request_id for e in request.events if e.request_id in self.poison]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"event {bad[0]} is invalid")
        await self.gate.wait()
        self.batches.append(len(request.events))
        ids = [e.request_id for e in request.events]
        self.received.extend(ids)
        new = [rid for rid in ids if rid not in self.stored]
        self.stored.extend(new)
        return pb.RecordEventsResponse(stored=len(new), duplicates=len(ids) - len(new))


Make = Callable[..., tuple[UsageEmitter, Spool]]


@pytest.fixture
async def ledger() -> AsyncIterator[Ledger]:
    servicer = Ledger()
    server = grpc.aio.server()
    record = grpc.unary_unary_rpc_method_handler(
        servicer.RecordEvents,
        request_deserializer=pb.RecordEventsRequest.FromString,
        response_serializer=pb.RecordEventsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"RecordEvents": record})])
    servicer.addr = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    yield servicer
    servicer.gate.set()
    await server.stop(None)


@pytest.fixture
async def make(ledger: Ledger, tmp_path: Path) -> AsyncIterator[Make]:
    channel = grpc.aio.insecure_channel(ledger.addr)
    made: list[tuple[UsageEmitter, Spool]] = []

    def build(batch_size: int = 3, path: Path = tmp_path / "spool.db") -> tuple[UsageEmitter, Spool]:
        spool = Spool.open(path)
        emitter = UsageEmitter(
            channel, spool, batch_size=batch_size, flush_seconds=0.01, max_backoff_seconds=0.05, rpc_timeout_seconds=5
        )
        emitter.start()
        made.append((emitter, spool))
        return emitter, spool

    yield build
    for emitter, spool in made:
        await emitter.close(wait_seconds=0)
        spool.close()
    await channel.close(None)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def ids(start: int, stop: int) -> list[str]:
    return [f"r{i:03d}" for i in range(start, stop)]


def emit(emitter: UsageEmitter, request_ids: list[str]) -> None:
    for rid in request_ids:
        emitter.emit(pb.UsageEvent(request_id=rid, model="m", prompt_tokens=1))


def metric(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_events_are_delivered_in_batches(ledger: Ledger, make: Make) -> None:
    emitter, _ = make(batch_size=3)
    emit(emitter, ids(0, 7))
    await until(lambda: len(ledger.stored) == 7, "delivery")
    assert ledger.stored == ids(0, 7)
    assert ledger.received == ids(0, 7)  # each sent once
    assert max(ledger.batches) <= 3
    assert (emitter.pending, emitter.spooled) == (0, 0)
    assert metric("interlock_usage_pending_events") == 0
    assert metric("interlock_usage_spool_events") == 0


async def test_unreachable_ledger_spools_then_replays_in_order_without_duplicates(ledger: Ledger, make: Make) -> None:
    spooled_before = metric("interlock_usage_events_spooled_total")
    replayed_before = metric("interlock_usage_events_replayed_total")
    emitter, spool = make(batch_size=3)
    ledger.fail_with = grpc.StatusCode.UNAVAILABLE
    emit(emitter, ids(0, 10))
    await until(lambda: emitter.spooled == 10 and emitter.pending == 0, "the failed events to be spooled")
    assert metric("interlock_usage_spool_events") == 10
    assert metric("interlock_usage_pending_events") == 0

    emit(emitter, ids(10, 15))  # while the spool holds events, newer ones join it at the back
    await until(lambda: emitter.spooled == 15 and emitter.pending == 0, "new events to join the spool")
    assert ledger.stored == []
    assert [pb.UsageEvent.FromString(e.payload).request_id for e in spool.peek(100)] == ids(0, 15)

    ledger.fail_with = None
    await until(lambda: len(ledger.stored) == 15, "the replay")
    assert ledger.stored == ids(0, 15)
    assert ledger.received == ids(0, 15)  # nothing acknowledged was sent again
    await until(lambda: emitter.spooled == 0, "the spool to empty")
    assert metric("interlock_usage_events_spooled_total") - spooled_before == 15
    assert metric("interlock_usage_events_replayed_total") - replayed_before == 15

    emit(emitter, ids(15, 18))  # back to memory-only delivery
    await until(lambda: len(ledger.stored) == 18, "delivery after recovery")
    assert ledger.stored == ids(0, 18)
    assert metric("interlock_usage_events_spooled_total") - spooled_before == 15


async def test_memory_spills_to_the_spool_past_the_high_water_mark(ledger: Ledger, make: Make) -> None:
    batch = 2
    emitter, _ = make(batch_size=batch)
    ledger.gate.clear()
    emit(emitter, ids(0, 1))
    await until(lambda: ledger.calls == 1, "the first send to hang")
    burst = HIGH_WATER_BATCHES * batch + 30
    emit(emitter, ids(1, 1 + burst))
    assert emitter.pending == burst + 1
    await until(lambda: emitter.pending == 0, "memory to spill")
    assert emitter.spooled == burst + 1  # the batch in flight too, in case its send fails
    assert ledger.calls == 1 and ledger.stored == []  # spilled while the first send still hung

    ledger.gate.set()
    await until(lambda: len(ledger.stored) == burst + 1 and emitter.spooled == 0, "the replay")
    assert ledger.stored == ids(0, 1 + burst)
    # The batch that was in flight was delivered, then replayed from the spool; the ledger skipped it.
    assert ledger.received.count("r000") == 2
    assert all(ledger.received.count(rid) == 1 for rid in ids(1, 1 + burst))


async def test_bursts_up_to_the_high_water_mark_stay_in_memory(ledger: Ledger, make: Make) -> None:
    spooled_before = metric("interlock_usage_events_spooled_total")
    emitter, _ = make(batch_size=2)
    ledger.gate.clear()
    emit(emitter, ids(0, 1))
    await until(lambda: ledger.calls == 1, "the first send to hang")
    total = 1 + HIGH_WATER_BATCHES * 2
    emit(emitter, ids(1, total))  # exactly at the mark, not over it
    ledger.gate.set()
    await until(lambda: len(ledger.stored) == total, "delivery")
    assert ledger.received == ids(0, total)
    assert metric("interlock_usage_events_spooled_total") == spooled_before


@pytest.mark.parametrize("ledger_state", ["down", "hanging"])
async def test_shutdown_spools_what_is_undelivered_and_the_next_start_replays_it(
    ledger: Ledger, make: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture, ledger_state: str
) -> None:
    caplog.set_level(logging.INFO, logger="services.router.usage_emitter")
    path = tmp_path / "router.db"
    first, first_spool = make(batch_size=4, path=path)
    if ledger_state == "down":
        ledger.fail_with = grpc.StatusCode.UNAVAILABLE
    else:
        ledger.gate.clear()
    emit(first, ids(0, 2))
    await until(lambda: ledger.calls >= 1, "a send")
    emit(first, ids(2, 9))
    started = time.monotonic()
    await first.close(wait_seconds=0.3)
    assert time.monotonic() - started < 2  # shutdown is bounded by wait_seconds, not by the ledger
    assert (first.pending, first.spooled) == (0, 9)
    assert "usage events wait in" in caplog.text
    first.emit(pb.UsageEvent(request_id="late"))  # a handler finishing after close: still kept
    assert first.spooled == 10
    first_spool.close()  # the process is gone: its lock goes with it

    ledger.fail_with = None
    ledger.gate.set()
    second, _ = make(batch_size=4, path=path)
    emit(second, ["new"])  # spooled events from the previous run go first
    await until(lambda: len(ledger.stored) == 11 and second.spooled == 0, "the replay")
    assert ledger.stored == [*ids(0, 9), "late", "new"]
    assert "replaying 10 usage events spooled" in caplog.text


async def test_rejected_event_is_dead_lettered_and_the_rest_delivered(
    ledger: Ledger, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    dead_before = metric("interlock_usage_events_dead_lettered_total")
    emitter, spool = make(batch_size=10)
    ledger.poison = {"r003"}
    emit(emitter, ids(0, 8))
    await until(lambda: len(ledger.stored) == 7 and emitter.spooled == 0, "the good events")
    assert ledger.stored == [*ids(0, 3), *ids(4, 8)]
    [dead] = spool.dead_letters()
    assert pb.UsageEvent.FromString(dead.payload).request_id == "r003"
    assert "INVALID_ARGUMENT" in dead.error and "r003" in dead.error
    assert metric("interlock_usage_events_dead_lettered_total") - dead_before == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "r003" in errors[0].getMessage()

    emit(emitter, ids(8, 10))  # the spool is not blocked
    await until(lambda: len(ledger.stored) == 9, "later events")


def test_each_router_port_gets_its_own_spool_file_unless_one_is_named() -> None:
    env = {"INTERLOCK_DATA_DIR": "/data", "INTERLOCK_ROUTER_LISTEN": "0.0.0.0:6001"}
    assert RouterSettings.from_env(env).usage_spool_path == Path("/data/spool/router-6001.db")
    named = {**env, "INTERLOCK_ROUTER_SPOOL_PATH": "/var/spool/r.db"}
    assert RouterSettings.from_env(named).usage_spool_path == Path("/var/spool/r.db")
