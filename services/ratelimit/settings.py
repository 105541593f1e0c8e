"""Ratelimit settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.env import get_bool, get_float, get_int, get_str
from services.common.errors import ConfigError
from services.ratelimit.policy import Rules


@dataclass(frozen=True)
class RateLimitSettings:
    listen: str
    # Empty: counters in this process (one replica). Set: shared through Redis.
    redis_url: str
    redis_prefix: str
    redis_cluster: bool
    redis_timeout_seconds: float
    # What a check does while the backend is unreachable: admit (open) or refuse (closed).
    fail_open: bool
    # How long a reservation is held when nobody settles it.
    hold_seconds: int
    rules: Rules
    # The usage service, where budget counters are rebuilt from; empty: no rebuild.
    usage_addr: str
    ledger_refresh_seconds: float
    grace_seconds: float
    log_level: str
    # host:port serving Prometheus /metrics over HTTP; empty (the default): none.
    metrics_listen: str = ""
    # How long a quota lease granted to an edge stays valid; a changed limit or a
    # revoked key takes effect within it.
    lease_ms: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RateLimitSettings:
        on_failure = get_str(env, "INTERLOCK_RATELIMIT_ON_BACKEND_FAILURE", "open")
        if on_failure not in ("open", "closed"):
            raise ConfigError(f"INTERLOCK_RATELIMIT_ON_BACKEND_FAILURE must be open or closed, not {on_failure!r}")
        hold_seconds = get_int(env, "INTERLOCK_RATELIMIT_HOLD_SECONDS", 900)
        ip_rpm = get_int(env, "INTERLOCK_RATELIMIT_IP_RPM", 0)
        ip_burst = get_int(env, "INTERLOCK_RATELIMIT_IP_BURST", 0)
        anonymous_rpm = get_int(env, "INTERLOCK_RATELIMIT_ANONYMOUS_RPM", 0)
        anonymous_burst = get_int(env, "INTERLOCK_RATELIMIT_ANONYMOUS_BURST", 0)
        lease_ms = get_int(env, "INTERLOCK_RATELIMIT_LEASE_MS", 1000)
        if lease_ms <= 0:
            raise ConfigError("INTERLOCK_RATELIMIT_LEASE_MS must be positive")
        if hold_seconds <= 0 or min(ip_rpm, ip_burst, anonymous_rpm, anonymous_burst) < 0:
            raise ConfigError(
                "INTERLOCK_RATELIMIT_HOLD_SECONDS must be positive; IP and anonymous limits must not be negative"
            )
        return cls(
            listen=get_str(env, "INTERLOCK_RATELIMIT_LISTEN", "127.0.0.1:50053"),
            metrics_listen=get_str(env, "INTERLOCK_RATELIMIT_METRICS_LISTEN", ""),
            redis_url=get_str(env, "INTERLOCK_RATELIMIT_REDIS_URL", ""),
            redis_prefix=get_str(env, "INTERLOCK_RATELIMIT_REDIS_PREFIX", "il"),
            redis_cluster=get_bool(env, "INTERLOCK_RATELIMIT_REDIS_CLUSTER", False),
            redis_timeout_seconds=get_float(env, "INTERLOCK_RATELIMIT_REDIS_TIMEOUT_SECONDS", 0.25),
            fail_open=on_failure == "open",
            hold_seconds=hold_seconds,
            lease_ms=lease_ms,
            rules=Rules(
                endpoint_rpm=Rules.parse_endpoint_rpm(get_str(env, "INTERLOCK_RATELIMIT_ENDPOINT_RPM", "")),
                ip_rpm=ip_rpm,
                ip_burst=ip_burst,
                anonymous_rpm=anonymous_rpm,
                anonymous_burst=anonymous_burst,
            ),
            usage_addr=get_str(env, "INTERLOCK_USAGE_ADDR", ""),
            ledger_refresh_seconds=get_float(env, "INTERLOCK_RATELIMIT_LEDGER_REFRESH_SECONDS", 60.0),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )
