"""Fixed-window rate limiting: the in-memory backend and the servicer's Check, on a manual clock."""

from __future__ import annotations

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from services.common.clock import ManualClock
from services.ratelimit.backends.memory import MemoryBackend
from services.ratelimit.servicer import WINDOW_SECONDS, RateLimitServicer

START = 1_700_000_000.0  # 20 s into a 60 s window
WINDOW_END = 1_700_000_040


async def test_exactly_limit_admitted_and_remaining_counts_down() -> None:
    backend = MemoryBackend(ManualClock(START))
    results = [await backend.hit("b", 3, 60, 1) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0, 0]
    assert {r.reset_at for r in results} == {WINDOW_END}
    assert {r.limit for r in results} == {3}


async def test_new_window_resets_the_count() -> None:
    clock = ManualClock(START)
    backend = MemoryBackend(clock)
    for _ in range(3):
        await backend.hit("b", 3, 60, 1)
    clock.advance(39.9)  # still inside the window
    assert (await backend.hit("b", 3, 60, 1)).allowed is False
    clock.advance(0.1)  # exactly at the window end
    fresh = await backend.hit("b", 3, 60, 1)
    assert (fresh.allowed, fresh.remaining, fresh.reset_at) == (True, 2, WINDOW_END + 60)


async def test_cost_is_consumed_whole_or_not_at_all() -> None:
    backend = MemoryBackend(ManualClock(START))
    assert (await backend.hit("b", 5, 60, 3)).remaining == 2
    denied = await backend.hit("b", 5, 60, 3)
    assert (denied.allowed, denied.remaining) == (False, 2)
    assert (await backend.hit("b", 5, 60, 2)).allowed is True


async def test_denied_hits_do_not_consume() -> None:
    backend = MemoryBackend(ManualClock(START))
    await backend.hit("b", 1, 60, 1)
    for _ in range(3):
        assert (await backend.hit("b", 1, 60, 1)).allowed is False
    assert (await backend.hit("b", 2, 60, 1)).allowed is True  # a raised limit sees used == 1


def _servicer(clock: ManualClock, default_rpm: int = 2) -> RateLimitServicer:
    return RateLimitServicer(MemoryBackend(clock), clock, default_rpm=default_rpm)


async def test_check_uses_default_and_reports_retry_after() -> None:
    clock = ManualClock(START)
    servicer = _servicer(clock)
    request = pb.CheckRequest(key_id="k1")
    first = await servicer.Check(request, None)  # type: ignore[arg-type]
    assert (first.allowed, first.limit, first.remaining, first.retry_after_seconds) == (True, 2, 1, 0)
    assert first.reset_at == WINDOW_END and first.quota == "key:requests"
    await servicer.Check(request, None)  # type: ignore[arg-type]
    denied = await servicer.Check(request, None)  # type: ignore[arg-type]
    assert denied.allowed is False and denied.remaining == 0
    assert denied.retry_after_seconds == WINDOW_END - int(START) == 40
    clock.advance(39.5)
    late = await servicer.Check(request, None)  # type: ignore[arg-type]
    assert late.allowed is False and late.retry_after_seconds == 1  # never 0 while denied
    clock.advance(0.5)
    assert (await servicer.Check(request, None)).allowed is True  # type: ignore[arg-type]


async def test_check_uses_requested_rpm_and_cost() -> None:
    servicer = _servicer(ManualClock(START), default_rpm=2)
    request = pb.CheckRequest(key_id="k1", requests_per_minute=5)
    answers = [await servicer.Check(request, None) for _ in range(6)]  # type: ignore[arg-type]
    assert [a.allowed for a in answers] == [True] * 5 + [False]
    assert {a.limit for a in answers} == {5}
    assert answers[-1].retry_after_seconds >= 1
    costly = await servicer.Check(pb.CheckRequest(key_id="k2", requests_per_minute=5, cost=4), None)  # type: ignore[arg-type]
    assert costly.remaining == 1


async def test_separate_keys_have_separate_buckets() -> None:
    servicer = _servicer(ManualClock(START), default_rpm=1)
    assert (await servicer.Check(pb.CheckRequest(key_id="a"), None)).allowed is True  # type: ignore[arg-type]
    assert (await servicer.Check(pb.CheckRequest(key_id="a"), None)).allowed is False  # type: ignore[arg-type]
    b = await servicer.Check(pb.CheckRequest(key_id="b"), None)  # type: ignore[arg-type]
    assert (b.allowed, b.remaining) == (True, 0)


def test_window_is_one_minute() -> None:
    assert WINDOW_SECONDS == 60
