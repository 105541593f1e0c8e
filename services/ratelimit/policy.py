"""Which quotas apply to a request: the key's and project's limits as their
catalog records carry them, plus this service's own rules for client IPs and
endpoint classes (seed 003: standard 60/min, chat 20/min, embeddings 100/min)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from interlock.ratelimit.v1 import ratelimit_pb2 as pb
from services.common.errors import ConfigError
from services.ratelimit.quotas import NANO, Kind, Quota, Scope

DEFAULT_CLASS = "default"


@dataclass(frozen=True)
class Rules:
    # Requests per minute per endpoint class, applied per key and per client IP;
    # "default" covers the classes without their own rule. Empty: no such limits.
    endpoint_rpm: Mapping[str, int] = field(default_factory=dict)
    # Requests per minute (and burst) per client IP over all endpoints; 0: none.
    ip_rpm: int = 0
    ip_burst: int = 0
    # Requests per minute (and burst) per client IP for callers without a key, asked
    # for by Envoy (an `anonymous` descriptor entry); 0: none.
    anonymous_rpm: int = 0
    anonymous_burst: int = 0

    @staticmethod
    def parse_endpoint_rpm(text: str) -> dict[str, int]:
        """'chat=20,embeddings=100,default=60' -> {'chat': 20, ...}."""
        rules: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
                raise ConfigError(f"endpoint rule {part!r} must look like chat=20 (a positive integer)")
            rules[name.strip()] = int(value)
        return rules

    def endpoint_limit(self, endpoint_class: str) -> int:
        return self.endpoint_rpm.get(endpoint_class, self.endpoint_rpm.get(DEFAULT_CLASS, 0))


def endpoint_class(endpoint: str) -> str:
    """The first path segment after the version: /v1/chat/completions -> chat,
    /v1/embeddings -> embeddings, /v1/models/x -> models; /v1/messages -> chat."""
    parts = [p for p in endpoint.split("/") if p and not (p[0] == "v" and p[1:].isdigit())]
    if parts[:2] == ["api", "execute"] or parts[:1] == ["agents"]:
        return "chat"  # seed 002's execute and agent runs call chat models
    if parts[:1] == ["messages"]:
        # Anthropic's Messages API is chat by another name; counting its tokens calls no model,
        # so it has a class of its own (as Anthropic limits it apart).
        return "count_tokens" if parts[1:2] == ["count_tokens"] else "chat"
    return parts[0] if parts else DEFAULT_CLASS


@dataclass(frozen=True)
class Period:
    # Counter suffix: "total" or "2026-11".
    label: str
    # Unix seconds when the period starts and ends (0, 0 for total).
    start: int
    end: int


TOTAL = Period("total", 0, 0)


def budget_period(kind: str, now: float) -> Period:
    if kind != "monthly":
        return TOTAL
    today = datetime.fromtimestamp(now, UTC)
    return _month(today.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


def period_of_label(label: str) -> Period:
    """The period a budget counter's label names ("total" or "2026-11"), as budget_period built it.
    Raises ValueError for anything else."""
    if label == TOTAL.label:
        return TOTAL
    return _month(datetime.strptime(label, "%Y-%m").replace(tzinfo=UTC))


def _month(start: datetime) -> Period:
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return Period(start.strftime("%Y-%m"), int(start.timestamp()), int(end.timestamp()))


class Floors:
    """What the usage ledger says each key and project spent, in nano-USD,
    so budget counters never read lower than the ledger (services.ratelimit.ledger fills it)."""

    def __init__(self) -> None:
        self.period_start = 0
        self.keys: dict[str, tuple[int, int]] = {}
        self.projects: dict[str, tuple[int, int]] = {}

    def floor(self, subject: str, subject_id: str, period: Period) -> int:
        table = self.keys if subject == "key" else self.projects
        total, in_period = table.get(subject_id, (0, 0))
        if period.label == "total":
            return total
        return in_period if period.start == self.period_start else 0


def _rate_quotas(prefix: str, limits: pb.Limits, reserve_tokens: int) -> list[Quota]:
    quotas = []
    if limits.requests_per_minute > 0:
        capacity = limits.burst if limits.burst > 0 else limits.requests_per_minute
        quotas.append(
            Quota.rate(
                f"{prefix}:requests",
                Kind.REQUESTS,
                "r",
                per_minute=limits.requests_per_minute,
                capacity=capacity,
                amount=1,
            )
        )
    if limits.tokens_per_minute > 0:
        tpm = limits.tokens_per_minute
        quotas.append(
            Quota.rate(f"{prefix}:tokens", Kind.TOKENS, "t", per_minute=tpm, capacity=tpm, amount=reserve_tokens)
        )
    return quotas


def _budget_quota(
    prefix: str, subject_id: str, limits: pb.Limits, reserve_nano: int, *, floors: Floors, now: float
) -> list[Quota]:
    if limits.budget_usd <= 0:
        return []
    period = budget_period(limits.budget_period, now)
    return [
        Quota(
            name=f"{prefix}:budget",
            kind=Kind.BUDGET,
            counter=f"b:{period.label}",
            limit=math.floor(limits.budget_usd * NANO),
            amount=reserve_nano,
            floor=floors.floor(prefix, subject_id, period),
            period_end=period.end,
        )
    ]


def _endpoint_quota(prefix: str, cls: str, rpm: int) -> Quota:
    return Quota.rate(f"{prefix}:{cls}:requests", Kind.REQUESTS, f"r:{cls}", per_minute=rpm, capacity=rpm, amount=1)


def scopes_for(request: pb.CheckRequest, rules: Rules, floors: Floors, now: float) -> list[Scope]:
    """Every scope with at least one quota that applies to this request."""
    reserve_tokens = max(request.reserve_tokens, 0)
    reserve_nano = max(math.ceil(request.reserve_usd * NANO), 0)
    cls = endpoint_class(request.endpoint)
    endpoint_rpm = rules.endpoint_limit(cls)
    scopes: list[Scope] = []
    if request.key_id:
        quotas = _rate_quotas("key", request.key_limits, reserve_tokens)
        quotas += _budget_quota("key", request.key_id, request.key_limits, reserve_nano, floors=floors, now=now)
        if endpoint_rpm:
            quotas.append(_endpoint_quota("key", cls, endpoint_rpm))
        scopes.append(Scope(f"key:{request.key_id}", tuple(quotas)))
    if request.project:
        quotas = _rate_quotas("project", request.project_limits, reserve_tokens)
        quotas += _budget_quota(
            "project", request.project, request.project_limits, reserve_nano, floors=floors, now=now
        )
        scopes.append(Scope(f"project:{request.project}", tuple(quotas)))
    if request.client_ip:
        scopes.append(Scope(f"ip:{request.client_ip}", tuple(ip_quotas(rules, cls))))
    return [scope for scope in scopes if scope.quotas]


def ip_quotas(rules: Rules, cls: str | None) -> list[Quota]:
    """The rules' quotas for one client IP: overall, and for the endpoint class when given."""
    quotas = []
    if rules.ip_rpm > 0:
        capacity = rules.ip_burst if rules.ip_burst > 0 else rules.ip_rpm
        quotas.append(
            Quota.rate("ip:requests", Kind.REQUESTS, "r", per_minute=rules.ip_rpm, capacity=capacity, amount=1)
        )
    class_rpm = rules.endpoint_limit(cls) if cls is not None else 0
    if class_rpm:
        quotas.append(_endpoint_quota("ip", cls or DEFAULT_CLASS, class_rpm))
    return quotas


def anonymous_quotas(rules: Rules) -> list[Quota]:
    """The rule for one client IP's requests that carry no key."""
    if rules.anonymous_rpm <= 0:
        return []
    capacity = rules.anonymous_burst if rules.anonymous_burst > 0 else rules.anonymous_rpm
    return [
        Quota.rate("anon:requests", Kind.REQUESTS, "r", per_minute=rules.anonymous_rpm, capacity=capacity, amount=1)
    ]
