"""How every process opens its gRPC client channels to the other services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

# In Kubernetes the services are headless: DNS answers every pod's address. round_robin spreads
# calls over all of them (pick_first would pin a client to one pod); the servers' maximum
# connection age (grpc_server.create_server) makes clients re-resolve, so new pods get traffic.
# Pings keep idle watch streams alive through proxies and NAT. A neighbour that comes back is
# used again within ~2 s rather than after gRPC's default backoff of up to 2 minutes: meanwhile
# the edge fails open on rate limits and the router spools usage events.
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def open_channel(
    address: str,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[*CLIENT_OPTIONS, *options], interceptors=interceptors)
