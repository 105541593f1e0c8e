"""`interlock up --envoy`: the Envoy front proxy as one more supervised child.

Envoy takes the public --host/--port (TLS with --tls-cert/--tls-key); the edge moves
to a free loopback port behind it and leaves per-IP limits to Envoy, which asks the
ratelimit service for them. The config is rendered from the local profile into
<data-dir>/envoy/envoy.yaml, with the JSON access log beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.envoy.options import DEFAULT_MAX_BODY_BYTES, EnvoyOptions, build_options
from gateway.envoy.render import render
from services.common.env import get_int


@dataclass(frozen=True)
class EnvoyLayout:
    options: EnvoyOptions
    config: Path

    @property
    def url(self) -> str:
        scheme = "https" if self.options.tls else "http"
        return f"{scheme}://{self.options.listen}"

    @property
    def probe_url(self) -> str:
        return f"http://{self.options.probe_listen}/ready"

    def stack_entry(self) -> dict[str, str]:
        """What stack.json says of Envoy (no secrets)."""
        return {
            "url": self.url,
            "grpc": str(self.options.grpc_listen),
            "probe": self.probe_url,
            "admin": f"http://{self.options.admin}",
            "config": str(self.config),
            "access_log": self.options.access_log,
        }


def plan_envoy(
    *,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    data_dir: Path,
    upstreams: Mapping[str, str],
    free_ports: Mapping[str, int],
    environ: Mapping[str, str],
) -> EnvoyLayout:
    """Render the local profile for this stack; raises ConfigError on a bad combination
    (such as plain HTTP on a non-loopback --host)."""
    directory = data_dir / "envoy"
    directory.mkdir(parents=True, exist_ok=True)
    given: dict[str, str | None] = {
        "listen": f"{host}:{port}",
        "grpc_listen": f"127.0.0.1:{free_ports['grpc']}",
        "probe_listen": f"127.0.0.1:{free_ports['probe']}",
        "admin": f"127.0.0.1:{free_ports['admin']}",
        "tls_cert": str(tls_cert.resolve()) if tls_cert is not None else None,
        "tls_key": str(tls_key.resolve()) if tls_key is not None else None,
        "access_log": str(directory / "access.log"),
        **upstreams,
    }
    # The edge's body limit, so Envoy refuses exactly what the edge would.
    max_body = get_int(environ, "INTERLOCK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    options = build_options("local", given, max_body)
    config = directory / "envoy.yaml"
    config.write_text(render(options))
    return EnvoyLayout(options, config)


def edge_env_behind_envoy() -> dict[str, str]:
    """The edge leaves per-IP quotas to Envoy, and believes its X-Forwarded-For."""
    return {"INTERLOCK_EDGE_IP_LIMITS": "false", "INTERLOCK_EDGE_FORWARDED_ALLOW_IPS": "127.0.0.1"}
