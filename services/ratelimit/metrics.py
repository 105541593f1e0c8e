"""What the ratelimit service measures: decisions (and, for a refusal, the kind
of scope and quota that refused), check latency, and backend failures.

Labels are bounded: a scope's kind (key, project, ip, envoy), never its id.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.ratelimit.quotas import Kind, QuotaOutcome

DECISIONS = Counter(
    "interlock_ratelimit_decisions_total",
    "Checks decided. A refusal names the kind of scope and quota that refused; an admission "
    "has none; degraded: the backend could not decide and the fallback answered.",
    ["decision", "scope_kind", "quota_kind"],
)
BACKEND_FAILURES = Counter(
    "interlock_ratelimit_backend_failures_total", "Backend calls (checks, settles and leases) that failed."
)
LEASE_CLAIMS = Counter(
    "interlock_ratelimit_lease_claims_total",
    "Lease claims answered: granted (some units), empty (nothing left to lease), returned (want 0), "
    "unleasable (too small to split or not a bucket), degraded (the backend failed).",
    ["result"],
)
CHECK_SECONDS = Histogram(
    "interlock_ratelimit_check_seconds",
    "Time to decide one check, backend included; api is check (the edge's) or envoy.",
    ["api"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
# Looked up once: these run on every request.
CHECK_TIMER = CHECK_SECONDS.labels("check")
ENVOY_TIMER = CHECK_SECONDS.labels("envoy")

SCOPE_KINDS = frozenset({"key", "project", "ip", "envoy"})
QUOTA_KINDS = {Kind.REQUESTS: "requests", Kind.TOKENS: "tokens", Kind.BUDGET: "budget"}
NONE = "none"
_ADMITTED = DECISIONS.labels("admitted", NONE, NONE)


def count_decision(allowed: bool, refused_by: QuotaOutcome | None = None) -> None:
    """One decided check; refused_by is the quota a refusal describes (limiter.binding)."""
    if allowed:
        _ADMITTED.inc()
        return
    if refused_by is None:
        DECISIONS.labels("refused", NONE, NONE).inc()
        return
    # Quota names start with their scope's kind: key:requests, ip:chat:requests, envoy:<domain>:requests.
    scope_kind = refused_by.quota.name.partition(":")[0]
    DECISIONS.labels(
        "refused",
        scope_kind if scope_kind in SCOPE_KINDS else "other",
        QUOTA_KINDS.get(refused_by.quota.kind, "other"),
    ).inc()


def count_degraded(allowed: bool) -> None:
    """A check the backend could not decide, answered by the fail-open or fail-closed fallback."""
    DECISIONS.labels("admitted" if allowed else "refused", "degraded", "degraded").inc()
