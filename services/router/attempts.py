"""Trying targets until one answers: failover, backoff, deadline, breakers,
latency stats and hedging, for streams and unary calls alike.

A unary call is run as a one-item stream, so the same engine serves both. An
attempt succeeds when its first item arrives (for a stream: the first byte the
client could see); a stream is never failed over after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from interlock.router.v1 import router_pb2 as pb
from services.common.clock import Clock
from services.common.errors import InterlockError, UpstreamError
from services.router import metrics
from services.router.breaker import CircuitBreakers
from services.router.providers.base import ProviderAdapter, Target
from services.router.routing import Plan, deployment_key
from services.router.stats import LatencyStats

R = TypeVar("R")
OpenStream = Callable[[ProviderAdapter, Target], AsyncGenerator[R, None]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    # Longest time from the request's arrival to its first byte, over all attempts.
    deadline_seconds: float
    backoff_base_seconds: float
    backoff_max_seconds: float


@dataclass
class Opened(Generic[R]):
    first: R
    rest: AsyncGenerator[R, None]
    target: Target


async def single(call: Callable[[], Awaitable[R]]) -> AsyncGenerator[R, None]:
    """A unary call as a one-item stream."""
    yield await call()


class AttemptRunner:
    def __init__(
        self,
        adapters: Mapping[int, ProviderAdapter],
        breakers: CircuitBreakers,
        stats: LatencyStats,
        policy: RetryPolicy,
        clock: Clock,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._adapters = adapters
        self._breakers = breakers
        self._stats = stats
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()

    def backoff(self, failures: int) -> float:
        """Full jitter: a random wait up to base * 2^(failures - 1), capped."""
        ceiling = min(self._policy.backoff_max_seconds, self._policy.backoff_base_seconds * 2 ** (failures - 1))
        return self._rng.uniform(0, ceiling)

    async def open(
        self,
        plan: Plan,
        decision: pb.RoutingDecision,
        open_stream: OpenStream[R],
        *,
        first_token: bool,
        time_left: float | None,
    ) -> Opened[R]:
        budget = self._policy.deadline_seconds if time_left is None else min(self._policy.deadline_seconds, time_left)
        deadline = self._clock.monotonic() + budget
        # Each target in plan order, again from the top while attempts remain.
        order = [plan.targets[i % len(plan.targets)] for i in range(max(self._policy.max_attempts, 1))]
        last: InterlockError | None = None
        failures = 0
        i = 0
        while i < len(order):
            target = order[i]
            if not self._breakers.allows(deployment_key(target)):
                i += 1
                continue
            if failures:
                delay = self.backoff(failures)
                if self._clock.monotonic() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            hedge = order[i + 1] if plan.hedge_after_ms and i + 1 < len(order) else None
            if hedge is not None and deployment_key(hedge) == deployment_key(target):
                hedge = None
            try:
                return await self._race(
                    target, hedge, plan.hedge_after_ms, open_stream, deadline, decision, first_token
                )
            except UpstreamError as exc:
                last = exc
                failures += 1
                i += 2 if hedge is not None else 1
        if last is not None:
            raise last
        raise UpstreamError("No provider answered before the deadline.", code="deadline_exceeded", http_status=504)

    async def _race(  # noqa: PLR0917 - private; the call site names what it passes
        self,
        primary: Target,
        hedge: Target | None,
        hedge_after_ms: int,
        open_stream: OpenStream[R],
        deadline: float,
        decision: pb.RoutingDecision,
        first_token: bool,
    ) -> Opened[R]:
        if hedge is None:
            # Nothing to race: the attempt runs in this task (no task, no wait; a cancelled
            # caller still closes its upstream call, in _attempt).
            return await self._attempt(primary, open_stream, deadline, decision, first_token)
        running: dict[asyncio.Task[Opened[R]], Target] = {
            asyncio.create_task(self._attempt(primary, open_stream, deadline, decision, first_token)): primary
        }
        try:
            done, _ = await asyncio.wait(running, timeout=hedge_after_ms / 1000)
            if not done:
                # No first byte within the budget: ask the next candidate too, keep the faster.
                task = asyncio.create_task(self._attempt(hedge, open_stream, deadline, decision, first_token))
                running[task] = hedge
            errors: list[BaseException] = []
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    error = task.exception()
                    if error is None:
                        return task.result()
                    errors.append(error)
            for error in errors:
                if not isinstance(error, UpstreamError):
                    raise error  # a client error from the provider: not worth another try
            raise errors[-1]
        finally:
            # Losers (and everything, if our own caller went away) are cancelled, closing their upstream calls.
            for task in running:
                task.cancel()
            for task in list(running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    opened = await task
                    await opened.rest.aclose()

    async def _attempt(
        self,
        target: Target,
        open_stream: OpenStream[R],
        deadline: float,
        decision: pb.RoutingDecision,
        first_token: bool,
    ) -> Opened[R]:
        key = deployment_key(target)
        started = self._clock.monotonic()
        self._breakers.begin(key)
        stream = open_stream(self._adapters[target.provider.kind], target)
        outcome = "ok"
        try:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for runs the awaitable in a task of its own.
                async with asyncio.timeout(max(0.001, deadline - started)):
                    first = await anext(stream)
            except TimeoutError as exc:
                raise UpstreamError(
                    f"provider {target.provider.id} did not answer before the deadline",
                    code="deadline_exceeded",
                    http_status=504,
                ) from exc
            except StopAsyncIteration as exc:
                raise UpstreamError(
                    f"provider {target.provider.id} sent an empty stream", code="upstream_empty"
                ) from exc
        except UpstreamError as exc:
            outcome = exc.code
            self._breakers.failure(key, exc.retry_after)
            await stream.aclose()
            raise
        except InterlockError as exc:
            outcome = exc.code
            await stream.aclose()
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            await stream.aclose()
            raise
        finally:
            elapsed = self._clock.monotonic() - started
            decision.attempts.add(
                provider=target.provider.id, model=target.model.id, outcome=outcome, latency_ms=int(elapsed * 1000)
            )
            metrics.count_attempt(target.provider.id, key, outcome)
        self._breakers.success(key)
        self._stats.observe(key, elapsed * 1000, first_token=first_token)
        decision.provider = target.provider.id
        decision.model = target.model.id
        decision.deployment = target.deployment.upstream_model
        return Opened(first, stream, target)
