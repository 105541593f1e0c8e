"""Edge settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from services.common.env import SettingsError, get_bool, get_float, get_int, get_str
from services.router.settings import RouterSettings

EdgeMode = Literal["microservices", "colocated"]
# microservices: the router is its own process, reached over gRPC (the Kubernetes base).
# colocated: the router runs inside this process, called through an in-process channel.
MODES: tuple[EdgeMode, ...] = ("microservices", "colocated")


@dataclass(frozen=True)
class EdgeSettings:
    host: str
    port: int
    catalog_addr: str
    router_addr: str
    ratelimit_addr: str
    usage_addr: str
    # Server-side secret keying API key hashes; must equal the catalog's.
    key_pepper: bytes
    # Largest request body accepted, in bytes; larger ones get 413.
    max_body_bytes: int
    # When the ratelimit service cannot be reached: admit (true) or refuse with 503 (false).
    ratelimit_fail_open: bool
    # Per-call deadline for unary router calls, in seconds.
    request_timeout_seconds: float
    # Completion tokens reserved from token quotas when a request sets no max_tokens
    # (capped by the model's own output limit).
    default_completion_tokens: int
    log_level: str
    # Whether the edge takes the per-IP quotas itself; false behind Envoy, which does
    # (the client IP is still recorded with each request).
    ip_limits: bool = True
    # Peers whose X-Forwarded-For the edge believes (uvicorn's forwarded_allow_ips):
    # the proxy in front, so the edge sees the real client address.
    forwarded_allow_ips: str = "127.0.0.1"
    # How long an idle client connection stays open; longer than the proxy's own idle
    # timeout (Envoy: 30 s), so the proxy never reuses a connection the edge is closing.
    keep_alive_seconds: int = 75
    # How long open requests (streams included) may finish after SIGTERM, as the services' drain.
    grace_seconds: float = 5.0
    # How long POST /api/v2/execute waits for its job before answering with a requestId to poll.
    execute_wait_seconds: float = 5.0
    mode: EdgeMode = "microservices"
    # Co-located mode only: the router's own settings (its gRPC listener, spool, providers).
    router: RouterSettings | None = None
    # Bind the HTTP socket (and the co-located router's gRPC listener) with SO_REUSEPORT,
    # so several edge workers share one port and the kernel spreads connections over them.
    reuse_port: bool = False
    # host:port of a second HTTP socket private to this worker (empty: none), serving the same
    # app: the supervisor health-checks each worker there, and /metrics there is this worker's.
    worker_listen: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EdgeSettings:
        pepper = get_str(env, "INTERLOCK_KEY_PEPPER", "")
        if not pepper:
            raise SettingsError("INTERLOCK_KEY_PEPPER must be set (the server-side secret for key hashes)")
        mode = _mode(env)
        return cls(
            host=get_str(env, "INTERLOCK_EDGE_HOST", "127.0.0.1"),
            port=get_int(env, "INTERLOCK_EDGE_PORT", 8080),
            catalog_addr=get_str(env, "INTERLOCK_CATALOG_ADDR", "127.0.0.1:50051"),
            router_addr=get_str(env, "INTERLOCK_ROUTER_ADDR", "127.0.0.1:50052"),
            ratelimit_addr=get_str(env, "INTERLOCK_RATELIMIT_ADDR", "127.0.0.1:50053"),
            usage_addr=get_str(env, "INTERLOCK_USAGE_ADDR", "127.0.0.1:50054"),
            key_pepper=pepper.encode(),
            max_body_bytes=get_int(env, "INTERLOCK_MAX_BODY_BYTES", 10 * 1024 * 1024),
            ratelimit_fail_open=get_bool(env, "INTERLOCK_RATELIMIT_FAIL_OPEN", True),
            request_timeout_seconds=get_float(env, "INTERLOCK_REQUEST_TIMEOUT_SECONDS", 600.0),
            default_completion_tokens=get_int(env, "INTERLOCK_DEFAULT_COMPLETION_TOKENS", 4096),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
            ip_limits=get_bool(env, "INTERLOCK_EDGE_IP_LIMITS", True),
            forwarded_allow_ips=get_str(env, "INTERLOCK_EDGE_FORWARDED_ALLOW_IPS", "127.0.0.1"),
            keep_alive_seconds=get_int(env, "INTERLOCK_EDGE_KEEP_ALIVE_SECONDS", 75),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            execute_wait_seconds=get_float(env, "INTERLOCK_EDGE_EXECUTE_WAIT_SECONDS", 5.0),
            mode=mode,
            router=RouterSettings.from_env(env) if mode == "colocated" else None,
            reuse_port=get_bool(env, "INTERLOCK_EDGE_REUSE_PORT", False),
            worker_listen=get_str(env, "INTERLOCK_EDGE_WORKER_LISTEN", ""),
        )


def _mode(env: Mapping[str, str]) -> EdgeMode:
    raw = get_str(env, "INTERLOCK_EDGE_MODE", "microservices")
    for mode in MODES:
        if raw == mode:
            return mode
    raise SettingsError(f"INTERLOCK_EDGE_MODE={raw!r} is not one of {', '.join(MODES)}")
