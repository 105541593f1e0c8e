"""Router settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.env import get_float, get_int, get_str


@dataclass(frozen=True)
class RouterSettings:
    listen: str
    catalog_addr: str
    usage_addr: str
    # Delay between tokens of the built-in demo provider's streams.
    demo_token_delay_ms: float
    # Usage events are sent in batches of at most this many, at least this often.
    usage_batch_size: int
    usage_flush_seconds: float
    # Provider API keys are read from here by the variable names the catalog names.
    provider_env: Mapping[str, str]
    grace_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RouterSettings:
        return cls(
            listen=get_str(env, "INTERLOCK_ROUTER_LISTEN", "127.0.0.1:50052"),
            catalog_addr=get_str(env, "INTERLOCK_CATALOG_ADDR", "127.0.0.1:50051"),
            usage_addr=get_str(env, "INTERLOCK_USAGE_ADDR", "127.0.0.1:50054"),
            demo_token_delay_ms=get_float(env, "INTERLOCK_DEMO_TOKEN_DELAY_MS", 20.0),
            usage_batch_size=get_int(env, "INTERLOCK_USAGE_BATCH_SIZE", 200),
            usage_flush_seconds=get_float(env, "INTERLOCK_USAGE_FLUSH_SECONDS", 0.05),
            provider_env=dict(env),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )
