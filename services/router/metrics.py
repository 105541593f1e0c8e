"""What the router measures: requests by model, provider and outcome, latency,
time to first token, tokens, cost, upstream attempts, breaker states, and the
router's own overhead (time not spent waiting on a provider).

Labels are bounded: models, providers and deployments come from the catalog,
error codes from a fixed list; never key ids, request ids or addresses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from interlock.usage.v1 import usage_pb2 as upb
from services.common.clock import Clock
from services.common.errors import InterlockError
from services.common.metrics import LATENCY_BUCKETS, MODEL_KEY, UPSTREAM_FIRST_MS_KEY, UPSTREAM_MS_KEY, LabelCache

T = TypeVar("T")

# The label of a request that never got as far as a model or provider.
NONE = "none"

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

REQUESTS = Counter(
    "interlock_router_requests_total",
    "Requests the router finished; code is the error code (errors only).",
    ["endpoint", "model", "provider", "status", "code"],
)
REQUEST_SECONDS = Histogram(
    "interlock_router_request_seconds",
    "Time from a request's arrival at the router to its end (streams: the last chunk).",
    ["endpoint", "model", "provider"],
    buckets=LATENCY_BUCKETS,
)
TTFT_SECONDS = Histogram(
    "interlock_router_ttft_seconds",
    "Streams: time from arrival to the first chunk with content.",
    ["model", "provider"],
    buckets=TTFT_BUCKETS,
)
TOKENS = Counter("interlock_router_tokens_total", "Tokens used, by kind.", ["model", "provider", "kind"])
COST = Counter(
    "interlock_router_cost_usd_total", "What requests cost, in USD at catalog prices.", ["model", "provider"]
)
ATTEMPTS = Counter(
    "interlock_router_upstream_attempts_total",
    "Calls to providers (failover and hedging make several per request); outcome is ok or an error code.",
    ["provider", "deployment", "outcome"],
)
OVERHEAD_SECONDS = Histogram(
    "interlock_router_overhead_seconds",
    "Time a request spent in the router not waiting on a provider.",
    ["endpoint"],
    buckets=OVERHEAD_BUCKETS,
)
BREAKER_STATE = Gauge(
    "interlock_provider_breaker_state",
    "Circuit breaker of a deployment: 0 closed, 1 half-open, 2 open.",
    ["deployment"],
)
# Children looked up without the library's lock: these run on every request.
_requests = LabelCache(REQUESTS)
_request_seconds = LabelCache(REQUEST_SECONDS)
_ttft_seconds = LabelCache(TTFT_SECONDS)
_tokens = LabelCache(TOKENS)
_cost = LabelCache(COST)
_attempts = LabelCache(ATTEMPTS)
_overhead_seconds = LabelCache(OVERHEAD_SECONDS)

# Error codes the gateway itself gives out. Any other code (a provider's own, passed
# through) is counted under its error class's default code, so the label stays bounded.
KNOWN_CODES = frozenset(
    {
        "client_cancelled",
        "context_length_exceeded",
        "cost_ceiling_exceeded",
        "deadline_exceeded",
        "internal_error",
        "invalid_image_url",
        "invalid_request",
        "invalid_tool_arguments",
        "invalid_tool_choice",
        "model_not_found",
        "model_not_supported",
        "provider_auth_failed",
        "provider_timeout",
        "provider_unavailable",
        "providers_failing",
        "unsupported_parameter",
        "upstream_bad_response",
        "upstream_empty",
        "upstream_error",
        "upstream_overloaded",
        "upstream_rate_limited",
        "upstream_rejected_request",
        "upstream_stream_error",
    }
)
_STATUS = {upb.STATUS_OK: "ok", upb.STATUS_ERROR: "error", upb.STATUS_CANCELLED: "cancelled"}


def error_code(error: BaseException) -> str:
    """A bounded label for an error."""
    if isinstance(error, InterlockError):
        return error.code if error.code in KNOWN_CODES else type(error).code
    return "cancelled" if type(error).__name__ == "CancelledError" else "internal_error"


def count_attempt(provider: str, deployment: str, outcome: str) -> None:
    """One call to a provider; outcome is ok, cancelled or an error code."""
    bounded = outcome if outcome in KNOWN_CODES or outcome in ("ok", "cancelled") else "other"
    _attempts(provider, deployment, bounded).inc()


class UpstreamTimer:
    """Wall time during which at least one provider call of a request was pending.
    Hedged attempts overlap, so this is a union of intervals, not a sum."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pending = 0
        self._since = 0.0
        self.seconds = 0.0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if not self._pending:
            self._since = self._clock.monotonic()
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1
            if not self._pending:
                self.seconds += self._clock.monotonic() - self._since

    async def wrap(self, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """stream, with every wait for its next item timed; closing this closes stream."""
        async with contextlib.aclosing(stream):
            while True:
                with self.waiting():
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        return
                yield item


class RequestMetrics:
    """One request's measurements in the router, counted when it finishes."""

    def __init__(self, clock: Clock, endpoint: str) -> None:
        # The router's own name for the endpoint: the caller's could be anything.
        self.endpoint = endpoint
        self.timer = UpstreamTimer(clock)
        # The catalog model (or profile) the request was planned for, once it was.
        self.planned = ""

    def finish(self, event: upb.UsageEvent, error: BaseException | None, seconds: float) -> tuple[tuple[str, str], ...]:
        """Count the finished request from its usage event (every label is known by
        then); returns the trailers that tell the edge what the providers took."""
        model = model_label(event, self.planned)
        observe_request(event, error, endpoint=self.endpoint, model=model, seconds=seconds, upstream=self.timer.seconds)
        return trailers(model, self.timer.seconds)


def model_label(event: upb.UsageEvent, planned: str) -> str:
    """The catalog model a request is counted under: the one that answered (or was
    tried last), else the one planned; never the raw requested name, which is unbounded."""
    return event.model or planned or NONE


def observe_request(
    event: upb.UsageEvent, error: BaseException | None, *, endpoint: str, model: str, seconds: float, upstream: float
) -> None:
    provider = event.provider or NONE
    status = _STATUS.get(event.status, "error")
    code = error_code(error) if status == "error" and error is not None else ""
    _requests(endpoint, model, provider, status, code).inc()
    _request_seconds(endpoint, model, provider).observe(seconds)
    _overhead_seconds(endpoint).observe(max(seconds - upstream, 0.0))
    if event.stream and event.ttft_ms:
        _ttft_seconds(model, provider).observe(event.ttft_ms / 1000)
    for kind, count in (
        ("prompt", event.prompt_tokens),
        ("completion", event.completion_tokens),
        ("cached", event.cached_tokens),
    ):
        if count:
            _tokens(model, provider, kind).inc(count)
    if event.cost_usd > 0:
        _cost(model, provider).inc(event.cost_usd)


def first_chunk_metadata(upstream_seconds: float) -> tuple[tuple[str, str], ...]:
    """A stream's initial metadata: its wait on providers until its first chunk."""
    return ((UPSTREAM_FIRST_MS_KEY, f"{upstream_seconds * 1000:.3f}"),)


def trailers(model: str, upstream_seconds: float) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that lets the edge work out the gateway's overhead."""
    out = ((UPSTREAM_MS_KEY, f"{upstream_seconds * 1000:.3f}"),)
    # Metadata values must be printable ASCII; a catalog id that is not stays out.
    return (*out, (MODEL_KEY, model)) if model != NONE and model.isascii() and model.isprintable() else out
