"""Envoy's three listeners: public (TLS, rate limits, transcoding, local replies
in the public error shape), internal gRPC (plaintext HTTP/2 by service prefix)
and the readiness probe."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from gateway.envoy.access_log import CLIENT_METHOD_HEADER, access_log
from gateway.envoy.local_reply import local_reply_config
from gateway.envoy.options import Address, EnvoyOptions
from gateway.envoy.routes import LUA, TRANSCODER, internal_routes, public_routes, public_transcoder

HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RATELIMIT_DOMAIN = "interlock"
# How long a request waits for the ratelimit service before going ahead unlimited.
RATELIMIT_TIMEOUT = "0.2s"


def _address(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _rate_limits() -> list[dict[str, Any]]:
    anonymous = {
        "header_value_match": {
            "descriptor_key": "anonymous",
            "descriptor_value": "true",
            # Neither credential header: the caller has no key.
            "headers": [
                {"name": "authorization", "present_match": False},
                {"name": "x-api-key", "present_match": False},
            ],
        }
    }
    path = {"request_headers": {"header_name": ":path", "descriptor_key": "path"}}
    request_id = {
        "request_headers": {"header_name": "x-request-id", "descriptor_key": "request_id", "skip_if_absent": True}
    }
    return [
        # Per client IP, overall and by endpoint class (from the path): the ip:<ip> counters.
        {"actions": [{"remote_address": {}}, path]},
        # Callers without a key, per client IP: the anon:<ip> counters.
        {"actions": [anonymous, {"remote_address": {}}]},
        # Limits nothing: the ratelimit service names this id in its 429 body.
        {"actions": [request_id]},
    ]


def _lua_source() -> str:
    return resources.files("gateway.envoy").joinpath("errors.lua").read_text()


def _public_filters(options: EnvoyOptions) -> list[dict[str, Any]]:
    return [
        {
            # The transcoder rewrites :method to POST; the access log shows the client's.
            "name": "envoy.filters.http.header_mutation",
            "typed_config": _typed(
                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                mutations={
                    "request_mutations": [
                        {
                            "append": {
                                "header": {"key": CLIENT_METHOD_HEADER, "value": "%REQ(:METHOD)%"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        }
                    ]
                },
            ),
        },
        {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": _typed(
                "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                domain=RATELIMIT_DOMAIN,
                timeout=RATELIMIT_TIMEOUT,
                failure_mode_deny=False,
                # No x-ratelimit headers of Envoy's: on answers the edge serves they would be
                # appended beside the edge's per-key ones, and its 429s carry the ratelimit
                # service's own (response_headers_to_add), in the edge's format.
                enable_x_ratelimit_headers="OFF",
                rate_limited_as_resource_exhausted=True,
                rate_limit_service={
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                    "transport_api_version": "V3",
                },
            ),
        },
        {
            # Request bodies only (responses stream): the edge's limit, refused before the edge.
            "name": "envoy.filters.http.buffer",
            "typed_config": _typed(
                "envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=options.max_body_bytes
            ),
        },
        {
            # Before the transcoder, so it sees the transcoded response on the way out.
            "name": LUA,
            "typed_config": _typed(
                "envoy.extensions.filters.http.lua.v3.Lua",
                default_source_code={"inline_string": _lua_source()},
            ),
        },
        {"name": TRANSCODER, "typed_config": public_transcoder()},
        {"name": "envoy.filters.http.router", "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router")},
    ]


def _hcm(stat_prefix: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": HCM, "typed_config": {"@type": HCM_TYPE, "stat_prefix": stat_prefix, **fields}}


def public_listener(options: EnvoyOptions) -> dict[str, Any]:
    hcm = _hcm(
        "public",
        {
            "codec_type": "AUTO",
            "server_name": "interlock",
            "access_log": access_log(options.access_log),
            # Envoy is the edge of trust: the client address is the peer's, never a header's.
            "use_remote_address": True,
            "xff_num_trusted_hops": 0,
            "generate_request_id": True,
            "preserve_external_request_id": True,
            "always_set_request_id_in_response": True,
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "request_headers_timeout": "10s",
            # Streams have no overall deadline; only silence ends them (per route, see routes.py).
            "request_timeout": "0s",
            "stream_idle_timeout": "300s",
            "common_http_protocol_options": {
                "idle_timeout": "3600s",
                "headers_with_underscores_action": "REJECT_REQUEST",
            },
            "http2_protocol_options": {
                "max_concurrent_streams": 100,
                "initial_stream_window_size": 65536,
                "initial_connection_window_size": 1048576,
            },
            "local_reply_config": local_reply_config(options.max_body_bytes),
            "route_config": {
                "name": "public",
                "virtual_hosts": [
                    {"name": "public", "domains": ["*"], "rate_limits": _rate_limits(), "routes": public_routes()}
                ],
            },
            "http_filters": _public_filters(options),
        },
    )
    chain: dict[str, Any] = {"filters": [hcm]}
    if options.tls:
        assert options.tls_cert is not None and options.tls_key is not None
        certificate: dict[str, Any] = {
            "certificate_chain": {"filename": options.tls_cert},
            "private_key": {"filename": options.tls_key},
        }
        cert_dir = os.path.dirname(options.tls_cert)
        if cert_dir and cert_dir == os.path.dirname(options.tls_key):
            # A mounted Secret is swapped by symlink: reload the pair when the directory changes.
            certificate["watched_directory"] = {"path": cert_dir}
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                common_tls_context={
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [certificate],
                },
            ),
        }
    return {
        "name": "public",
        "address": _address(options.listen),
        "per_connection_buffer_limit_bytes": 32768,
        "filter_chains": [chain],
    }


def internal_listener(options: EnvoyOptions) -> dict[str, Any]:
    hcm = _hcm(
        "internal_grpc",
        {
            "codec_type": "HTTP2",
            "access_log": access_log(options.access_log),
            "generate_request_id": True,
            "preserve_external_request_id": True,
            # Watch streams stay open and quiet for hours; pings find dead peers instead.
            "stream_idle_timeout": "0s",
            "request_timeout": "0s",
            "http2_protocol_options": {
                "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                "max_concurrent_streams": 1000,
            },
            "route_config": {
                "name": "internal_grpc",
                "virtual_hosts": [{"name": "grpc", "domains": ["*"], "routes": internal_routes()}],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
                }
            ],
        },
    )
    return {"name": "internal_grpc", "address": _address(options.grpc_listen), "filter_chains": [{"filters": [hcm]}]}


def probe_listener(options: EnvoyOptions) -> dict[str, Any]:
    hcm = _hcm(
        "probe",
        {
            "route_config": {
                "name": "probe",
                "virtual_hosts": [
                    {
                        "name": "probe",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                    }
                ],
            },
            "http_filters": [
                {
                    # 200 while healthy, 503 once Envoy drains or is failed through the admin API.
                    "name": "envoy.filters.http.health_check",
                    "typed_config": _typed(
                        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
                        pass_through_mode=False,
                        headers=[{"name": ":path", "string_match": {"exact": "/ready"}}],
                    ),
                },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
                },
            ],
        },
    )
    return {"name": "probe", "address": _address(options.probe_listen), "filter_chains": [{"filters": [hcm]}]}


def listeners(options: EnvoyOptions) -> list[dict[str, Any]]:
    return [public_listener(options), internal_listener(options), probe_listener(options)]
