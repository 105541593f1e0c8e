"""Router settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.env import get_bool, get_float, get_int, get_str


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
    # Durable local spool for usage events the usage service cannot take yet. One file per
    # process (a second process on the same file refuses to start).
    usage_spool_path: Path
    # The same for evaluation scores: next to the usage spool, "-scores" added to its name.
    score_spool_path: Path
    # Load the BPE tables at start. Off by default: the edge sends its chat prompt counts, so
    # only direct gRPC callers and the legacy completions API need them (loaded on first use).
    warm_tokenizer: bool
    # Failover: attempts per request, the time to a first byte over all of them, and the backoff between.
    max_attempts: int
    deadline_seconds: float
    backoff_base_seconds: float
    backoff_max_seconds: float
    # Circuit breaker: consecutive failures that open it, and how long it stays open.
    breaker_failures: int
    breaker_cooldown_seconds: float
    # Share of router:fast requests sent to a random candidate to keep measuring all of them.
    explore_rate: float
    # Provider API keys are read from here by the variable names the catalog names.
    provider_env: Mapping[str, str]
    grace_seconds: float
    log_level: str
    # host:port serving Prometheus /metrics over HTTP; empty (the default): none.
    metrics_listen: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RouterSettings:
        listen = get_str(env, "INTERLOCK_ROUTER_LISTEN", "127.0.0.1:50052")
        return cls(
            listen=listen,
            metrics_listen=get_str(env, "INTERLOCK_ROUTER_METRICS_LISTEN", ""),
            catalog_addr=get_str(env, "INTERLOCK_CATALOG_ADDR", "127.0.0.1:50051"),
            usage_addr=get_str(env, "INTERLOCK_USAGE_ADDR", "127.0.0.1:50054"),
            demo_token_delay_ms=get_float(env, "INTERLOCK_DEMO_TOKEN_DELAY_MS", 20.0),
            usage_batch_size=get_int(env, "INTERLOCK_USAGE_BATCH_SIZE", 200),
            usage_flush_seconds=get_float(env, "INTERLOCK_USAGE_FLUSH_SECONDS", 0.05),
            usage_spool_path=_spool_path(env, listen),
            score_spool_path=_score_spool_path(_spool_path(env, listen)),
            warm_tokenizer=get_bool(env, "INTERLOCK_ROUTER_WARM_TOKENIZER", False),
            max_attempts=get_int(env, "INTERLOCK_ROUTER_MAX_ATTEMPTS", 4),
            deadline_seconds=get_float(env, "INTERLOCK_ROUTER_DEADLINE_SECONDS", 120.0),
            backoff_base_seconds=get_float(env, "INTERLOCK_ROUTER_BACKOFF_BASE_MS", 50.0) / 1000,
            backoff_max_seconds=get_float(env, "INTERLOCK_ROUTER_BACKOFF_MAX_MS", 2000.0) / 1000,
            breaker_failures=get_int(env, "INTERLOCK_ROUTER_BREAKER_FAILURES", 5),
            breaker_cooldown_seconds=get_float(env, "INTERLOCK_ROUTER_BREAKER_COOLDOWN_SECONDS", 10.0),
            explore_rate=get_float(env, "INTERLOCK_ROUTER_EXPLORE_RATE", 0.05),
            provider_env=dict(env),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )


def _spool_path(env: Mapping[str, str], listen: str) -> Path:
    # Named by port: replicas on one machine listen on different ports, so they get different files.
    port = listen.rsplit(":", 1)[-1]
    default = Path(get_str(env, "INTERLOCK_DATA_DIR", ".interlock")) / "spool" / f"router-{port}.db"
    return Path(get_str(env, "INTERLOCK_ROUTER_SPOOL_PATH", str(default)))


def _score_spool_path(usage_spool: Path) -> Path:
    return usage_spool.with_name(f"{usage_spool.stem}-scores{usage_spool.suffix}")
