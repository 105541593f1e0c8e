"""What an end-to-end test needs of a stack that sits behind real Envoy.

Two launchers produce one: `interlock up --envoy` (tests/support/envoy_stack.py)
and the cluster rehearsal, which starts the dev overlay's Deployments as local
processes (tests/support/rehearsal.py). The suite in tests/envoy/ runs against
both, so the local config and the cluster's answer the same requests the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FrontedStack:
    # Envoy's public listener, e.g. "https://127.0.0.1:18443" or "http://127.0.0.1:18080".
    url: str
    # host:port of Envoy's listener for internal gRPC clients (HTTP/2, routed by service prefix).
    grpc_addr: str
    # The edge translator's own address behind Envoy (http://host:port), for side-by-side checks.
    edge_url: str
    api_key: str
    admin_key: str
    # PEM of the CA that signed Envoy's certificate, or None when the listener is plain HTTP.
    ca_cert: Path | None
    # Where Envoy writes its JSON access log.
    access_log: Path
    # Requests per minute the per-IP rule admits (the RLS rule Envoy asks for), and the
    # rule for callers without a key; 0 when not configured.
    ip_rpm: int
    anonymous_rpm: int
    # Concatenated logs of every process, for failure messages.
    logs: Callable[[], str] = field(default=lambda: "")

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}
