"""Envoy's rate limit service (envoy.service.ratelimit.v3.RateLimitService), so
Envoy's global rate limit filter (envoy.filters.http.ratelimit) can ask this
service, anonymous callers included, and be answered from the same counters as
the edge's Check.

Each descriptor of a request becomes one scope, and all of them are decided in
one limiter call: taken from all, or from none. Descriptors that name the same
scope share it, each counter taken once. A descriptor's hits_addend, else the
request's, else 1, is what it takes.

- `remote_address=<ip>` (Envoy's remote_address action): the client IP's rules,
  in the scope and counters the edge's Check uses (`ip:<ip>`, `r` and
  `r:<class>`), so an IP has one counter whichever of the two asks. The endpoint
  class comes from an `endpoint_class` entry, else from a `path` or `:path` entry.
- `anonymous=<any>` beside `remote_address=<ip>` (Envoy's header_value_match for
  requests without Authorization or x-api-key): the rule for callers without a
  key (INTERLOCK_RATELIMIT_ANONYMOUS_RPM), in a scope of its own, `anon:<ip>`.
- a `limit` override: that many requests per unit, in a scope of its own named
  after the domain and the entries (`envoy:<domain>:k1=v1|k2=v2`). An override
  wins over the rules, as it does in envoyproxy/ratelimit.
- anything else has no rule here and is OK, as envoyproxy/ratelimit answers for
  descriptors it does not know. So is a refund (is_negative_hits): the engine
  gives back only what a reservation holds, so it takes nothing.

When the backend cannot decide, the limiter's fallback answers (fail open: OK).

RateLimitRequest carries no headers: Envoy sends the request's id as a
`request_id` entry (a descriptor of its own, which no rule limits), and a
refusal's body names it. Without one the refusal gets an id of its own, sent
back in x-request-id too, as the edge does.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import duration_pb2

from services.common import anthropic_errors
from services.common.errors import InterlockError, RateLimitError
from services.ratelimit import metrics
from services.ratelimit.limiter import Limiter, binding, reset_at
from services.ratelimit.policy import DEFAULT_CLASS, Rules, anonymous_quotas, endpoint_class, ip_quotas
from services.ratelimit.quotas import MICRO, MINUTE_US, Decision, Kind, Quota, QuotaOutcome, Scope

Context = grpc.aio.ServicerContext[Any, Any]
Response = rls_pb2.RateLimitResponse
Code = rls_pb2.RateLimitResponse.Code
RateLimit = rls_pb2.RateLimitResponse.RateLimit
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
DescriptorStatus = rls_pb2.RateLimitResponse.DescriptorStatus

_DAY_US = 86_400 * MICRO
# The override units Envoy can send, as microseconds; a month is 30 days, a year 365.
UNIT_US: dict[int, int] = {
    ratelimit_unit_pb2.SECOND: MICRO,
    ratelimit_unit_pb2.MINUTE: MINUTE_US,
    ratelimit_unit_pb2.HOUR: 3_600 * MICRO,
    ratelimit_unit_pb2.DAY: _DAY_US,
    ratelimit_unit_pb2.MONTH: 30 * _DAY_US,
    ratelimit_unit_pb2.YEAR: 365 * _DAY_US,
}
_UNIT_WORDS = {
    Unit.SECOND: "second",
    Unit.MINUTE: "minute",
    Unit.HOUR: "hour",
    Unit.DAY: "day",
    Unit.MONTH: "month",
    Unit.YEAR: "year",
}
REMOTE_ADDRESS = "remote_address"
ANONYMOUS = "anonymous"
REQUEST_ID = "request_id"
# The edge's rule for a caller's request id (gateway/middleware.py): short and plain.
_REQUEST_ID_FORMAT = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
ENDPOINT_CLASS = "endpoint_class"
PATH_KEYS = ("path", ":path")
# Envoy never settles, and request counters are not given back when a hold
# lapses: the shortest hold keeps the backend from keeping one per call for
# the limiter's default (15 minutes).
HOLD_SECONDS = 1


@dataclass(frozen=True)
class _Limited:
    """What one descriptor is limited by: quotas of one scope, and the limit the
    response reports for each of their counters."""

    scope: str
    quotas: tuple[Quota, ...]
    limits: dict[str, RateLimit]


class EnvoyRateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: Limiter, rules: Rules) -> None:
        self._limiter = limiter
        self._rules = rules

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Context) -> Response:
        with metrics.ENVOY_TIMER.time():
            return await self._should_rate_limit(request)

    async def _should_rate_limit(self, request: rls_pb2.RateLimitRequest) -> Response:
        hits = request.hits_addend or 1
        limited = [self._limited(request.domain, descriptor, hits) for descriptor in request.descriptors]
        scopes, limits = _merge([item for item in limited if item is not None])
        if not scopes:
            metrics.count_decision(True)
            return Response(overall_code=Code.OK, statuses=[DescriptorStatus(code=Code.OK) for _ in limited])
        decision = await self._limiter.decide(scopes, uuid.uuid4().hex, HOLD_SECONDS)
        if decision is None:
            metrics.count_degraded(self._limiter.degraded_allows)
            return self._degraded(limited, request)
        keys = [(scope.name, quota.counter) for scope in scopes for quota in scope.quotas]
        outcomes = dict(zip(keys, decision.outcomes, strict=True))
        out = Response(
            overall_code=Code.OK if decision.allowed else Code.OVER_LIMIT,
            statuses=[_status(item, outcomes, limits) for item in limited],
        )
        refused = None if decision.allowed else binding(decision)
        metrics.count_decision(decision.allowed, refused)
        if refused is not None:
            limit = next(limits[key] for key, outcome in outcomes.items() if outcome is refused)
            error = RateLimitError(
                f"Rate limit reached for requests ({refused.quota.name}): "
                f"{limit.requests_per_unit} per {_UNIT_WORDS.get(limit.unit, 'minute')}.",
                retry_after=max(math.ceil(refused.retry_us / MICRO), 1),
            )
            _refuse(out, error, refused, self._limiter.now_us(), request)
        return out

    def _limited(self, domain: str, descriptor: ratelimit_pb2.RateLimitDescriptor, hits: int) -> _Limited | None:
        """The scope and quotas one descriptor is limited by; None when no rule applies."""
        if descriptor.is_negative_hits:
            # A refund: reservations are the engine's only way to give back, so nothing is taken.
            return None
        amount = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else hits
        override = descriptor.limit
        if descriptor.HasField("limit") and override.unit in UNIT_US:
            scope = f"envoy:{domain}:" + "|".join(f"{e.key}={e.value}" for e in descriptor.entries)
            name = f"envoy:{domain}:requests"
            per_unit = override.requests_per_unit
            unit_us = UNIT_US[override.unit]
            # Zero per unit is a bucket of no capacity: it refuses every hit.
            interval_us = max(unit_us // per_unit, 1) if per_unit else unit_us
            quota = Quota(name, Kind.REQUESTS, "r", per_unit, interval_us, amount)
            limit = RateLimit(name=name, requests_per_unit=per_unit, unit=Unit.ValueType(override.unit))
            return _Limited(scope, (quota,), {quota.counter: limit})
        entries: dict[str, str] = {}
        for entry in descriptor.entries:
            entries.setdefault(entry.key, entry.value)
        ip = entries.get(REMOTE_ADDRESS)
        if not ip:
            return None
        if entries.get(ANONYMOUS):
            anonymous = tuple(replace(quota, amount=amount) for quota in anonymous_quotas(self._rules))
            if not anonymous:
                return None
            rate = RateLimit(name=anonymous[0].name, requests_per_unit=self._rules.anonymous_rpm, unit=Unit.MINUTE)
            return _Limited(f"anon:{ip}", anonymous, {anonymous[0].counter: rate})
        cls = entries.get(ENDPOINT_CLASS) or None
        path = next((entries[key] for key in PATH_KEYS if entries.get(key)), "")
        if cls is None and path:
            cls = endpoint_class(path.partition("?")[0])
        quotas = tuple(replace(quota, amount=amount) for quota in ip_quotas(self._rules, cls))
        if not quotas:
            return None
        limits = {
            quota.counter: RateLimit(name=quota.name, requests_per_unit=self._per_minute(quota, cls), unit=Unit.MINUTE)
            for quota in quotas
        }
        return _Limited(f"ip:{ip}", quotas, limits)

    def _per_minute(self, quota: Quota, cls: str | None) -> int:
        """The configured rate of one of policy.ip_quotas (its capacity may be a burst)."""
        if quota.counter == "r":
            return self._rules.ip_rpm
        return self._rules.endpoint_limit(cls or DEFAULT_CLASS)

    def _degraded(self, limited: Sequence[_Limited | None], request: rls_pb2.RateLimitRequest) -> Response:
        """The backend could not decide: the limited descriptors get the limiter's fallback."""
        code = Code.OK if self._limiter.degraded_allows else Code.OVER_LIMIT
        out = Response(
            overall_code=code,
            statuses=[DescriptorStatus(code=Code.OK if item is None else code) for item in limited],
        )
        if code == Code.OVER_LIMIT:
            error = RateLimitError("Rate limiting is unavailable; try again shortly.", retry_after=1)
            _refuse(out, error, None, self._limiter.now_us(), request)
        return out


def _merge(limited: Sequence[_Limited]) -> tuple[list[Scope], dict[tuple[str, str], RateLimit]]:
    """One scope per name, each counter in it once: Envoy may send [remote_address]
    beside [remote_address, path], and one request takes from the IP's counter once."""
    merged: dict[str, dict[str, Quota]] = {}
    limits: dict[tuple[str, str], RateLimit] = {}
    for item in limited:
        quotas = merged.setdefault(item.scope, {})
        for quota in item.quotas:
            known = quotas.get(quota.counter)
            if known is None or quota.amount > known.amount:
                quotas[quota.counter] = quota
            limits.setdefault((item.scope, quota.counter), item.limits[quota.counter])
    return [Scope(name, tuple(quotas.values())) for name, quotas in merged.items()], limits


def _status(
    item: _Limited | None,
    outcomes: dict[tuple[str, str], QuotaOutcome],
    limits: dict[tuple[str, str], RateLimit],
) -> DescriptorStatus:
    """One descriptor's code, and the limit of its tightest (or refusing) quota."""
    if item is None:
        return DescriptorStatus(code=Code.OK)
    own = tuple(outcomes[(item.scope, quota.counter)] for quota in item.quotas)
    allowed = all(o.allowed for o in own)
    shown = binding(Decision(allowed, own)) or own[0]
    return DescriptorStatus(
        code=Code.OK if allowed else Code.OVER_LIMIT,
        current_limit=limits[(item.scope, shown.quota.counter)],
        limit_remaining=max(shown.remaining, 0),
        duration_until_reset=_duration(shown.reset_us),
    )


def _duration(us: int) -> duration_pb2.Duration:
    us = max(us, 0)
    return duration_pb2.Duration(seconds=us // MICRO, nanos=(us % MICRO) * 1000)


def _request_id(request: rls_pb2.RateLimitRequest) -> str | None:
    """The request's own id, when Envoy sent it as a request_id entry in the edge's format."""
    for descriptor in request.descriptors:
        for entry in descriptor.entries:
            if entry.key == REQUEST_ID and _REQUEST_ID_FORMAT.match(entry.value):
                return str(entry.value)
    return None


def _path(request: rls_pb2.RateLimitRequest) -> str:
    """The request's path, from the per-IP descriptor that carries it ("" when none does)."""
    for descriptor in request.descriptors:
        for entry in descriptor.entries:
            if entry.key in PATH_KEYS and entry.value:
                return str(entry.value).partition("?")[0]
    return ""


def _refuse(
    out: Response,
    error: InterlockError,
    outcome: QuotaOutcome | None,
    now_us: int,
    request: rls_pb2.RateLimitRequest,
) -> None:
    """Envoy's 429 reads like the edge's: its rate-limit headers and error body, in
    Anthropic's shape on the Messages API's paths as the edge writes it there."""
    request_id = _request_id(request)
    headers = [("content-type", "application/json")]
    if request_id is None:
        # Envoy sets x-request-id on every answer from the request's own; only a new one is sent.
        request_id = "req_" + uuid.uuid4().hex
        headers.append(("x-request-id", request_id))
    if outcome is not None:
        headers += [
            ("x-ratelimit-limit", str(outcome.quota.limit)),
            ("x-ratelimit-remaining", str(max(outcome.remaining, 0))),
            ("x-ratelimit-reset", str(reset_at(outcome, now_us))),
        ]
    headers.append(("retry-after", str(max(1, round(error.retry_after or 1)))))
    out.response_headers_to_add.extend(base_pb2.HeaderValue(key=key, value=value) for key, value in headers)
    out.raw_body = orjson.dumps(anthropic_errors.error_body_for(_path(request), error, request_id))
