"""The Envoy v3 bootstrap for a profile, as a dict and as YAML."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.envoy.clusters import clusters
from gateway.envoy.listeners import listeners
from gateway.envoy.options import EnvoyOptions

# Several Envoys may share a machine (tests, local runs): no shared-memory hot restart.
ENVOY_FLAGS = ("--disable-hot-restart",)
MAX_DOWNSTREAM_CONNECTIONS = 50000


def bootstrap(options: EnvoyOptions) -> dict[str, Any]:
    return {
        "node": {"id": f"interlock-{options.profile}", "cluster": "interlock"},
        "admin": {
            "address": {"socket_address": {"address": options.admin.host, "port_value": options.admin.port}},
        },
        "static_resources": {"listeners": listeners(options), "clusters": clusters(options)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    }


def render(options: EnvoyOptions) -> str:
    header = (
        f"# Envoy front proxy for Interlock ({options.profile} profile).\n"
        "# Rendered by `python -m gateway.envoy render`; do not edit by hand.\n"
    )
    return header + yaml.safe_dump(bootstrap(options), sort_keys=False, width=1_000_000)
