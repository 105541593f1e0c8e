"""Envoy's upstream clusters: the edge over HTTP/1.1, the four services over HTTP/2
cleartext, each actively health-checked the way its own probes are."""

from __future__ import annotations

from typing import Any

from gateway.envoy.options import Address, EnvoyOptions

GRPC_SERVICES = ("catalog", "router", "ratelimit", "usage")
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Far above one replica's concurrency: Envoy's defaults (1024) would refuse long streams under load.
CIRCUIT_LIMIT = 16384


def _endpoints(name: str, address: Address) -> dict[str, Any]:
    socket = {"address": address.host, "port_value": address.port}
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": socket}}}]}],
    }


def _health_check(kind: dict[str, Any]) -> dict[str, Any]:
    return {
        "timeout": "1s",
        "interval": "5s",
        # Without traffic Envoy checks every minute by default: too slow to notice a restart.
        "no_traffic_interval": "5s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        **kind,
    }


def _base(name: str, address: Address, options: EnvoyOptions) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": _endpoints(name, address),
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": CIRCUIT_LIMIT,
                    "max_pending_requests": CIRCUIT_LIMIT,
                    "max_requests": CIRCUIT_LIMIT,
                    "max_retries": 16,
                }
            ]
        },
    }
    if options.discovery == "STRICT_DNS":
        # Envoy 1.40 deprecates the cluster-level DNS fields for the DNS cluster extension;
        # it resolves every address of a (headless) Service, as STRICT_DNS did.
        cluster["cluster_type"] = {
            "name": "envoy.clusters.dns",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                "dns_lookup_family": "V4_PREFERRED",
                "dns_refresh_rate": "5s",
                "respect_dns_ttl": True,
            },
        }
    else:
        cluster["type"] = options.discovery
    return cluster


def edge_cluster(options: EnvoyOptions) -> dict[str, Any]:
    cluster = _base("edge", options.upstreams.edge, options)
    cluster["typed_extension_protocol_options"] = {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
            # Close idle connections before the edge does (its keep-alive is longer), so a
            # request never races the edge closing the connection it was sent on.
            "common_http_protocol_options": {"idle_timeout": "30s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    cluster["health_checks"] = [_health_check({"http_health_check": {"path": "/healthz"}})]
    return cluster


def grpc_cluster(name: str, options: EnvoyOptions) -> dict[str, Any]:
    cluster = _base(name, options.upstreams.by_name()[name], options)
    cluster["typed_extension_protocol_options"] = {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 1000}},
        }
    }
    # TCP keepalive finds a dead peer under idle watch streams (HTTP/2 pings would need the
    # services to accept them that often).
    cluster["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10}}
    # The services' grpc.health.v1 overall status ("" service), as their Kubernetes probes ask.
    cluster["health_checks"] = [_health_check({"grpc_health_check": {}})]
    return cluster


def clusters(options: EnvoyOptions) -> list[dict[str, Any]]:
    return [edge_cluster(options), *(grpc_cluster(name, options) for name in GRPC_SERVICES)]
