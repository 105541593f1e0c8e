"""Ratelimit settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.env import get_float, get_int, get_str


@dataclass(frozen=True)
class RateLimitSettings:
    listen: str
    # Requests per minute for a key whose record sets no limit of its own.
    default_requests_per_minute: int
    grace_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RateLimitSettings:
        return cls(
            listen=get_str(env, "INTERLOCK_RATELIMIT_LISTEN", "127.0.0.1:50053"),
            default_requests_per_minute=get_int(env, "INTERLOCK_RATELIMIT_DEFAULT_RPM", 600),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )
