"""Route tables: the public one (the OpenAI-compatible API to the edge, the REST
admin/usage/stats API transcoded straight to catalog and usage) and the internal
one (gRPC to each service by its package prefix)."""

from __future__ import annotations

from typing import Any

from gateway.envoy.descriptors import TRANSCODED, RestRoute, TranscodedService, descriptor_set_base64, rest_routes

LUA = "envoy.filters.http.lua"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
TRANSCODER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
# Streaming-capable routes have no overall deadline: a stream lasts as long as tokens flow.
STREAMING_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/messages")
# Idle time allowed on an edge route: longer than the edge's own deadline
# (INTERLOCK_REQUEST_TIMEOUT_SECONDS, 600 s) so the edge's 504, in the public shape, comes first.
EDGE_IDLE_TIMEOUT = "620s"
# The edge's own deadline for a transcoded call (gateway.transcoder.UNARY_TIMEOUT_SECONDS).
REST_TIMEOUT = "30s"
# Served by the edge for the cluster's own eyes (Prometheus, probes); never public.
INTERNAL_ONLY_PATHS = ("/metrics", "/healthz")
GRPC_PREFIXES = {
    "catalog": ("/interlock.catalog.v1.",),
    "router": ("/interlock.router.v1.",),
    "ratelimit": ("/interlock.ratelimit.v1.", "/envoy.service.ratelimit.v3."),
    # The job service lives in the usage process (for now).
    "usage": ("/interlock.usage.v1.", "/interlock.jobs.v1."),
}
# Health and reflection exist on every service: the caller names one in this header
# (router when it does not).
UPSTREAM_HEADER = "x-interlock-upstream"
SHARED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
DEFAULT_SHARED_UPSTREAM = "router"


def transcoder_config(services: list[TranscodedService], proto_field_names: bool) -> dict[str, Any]:
    """The transcoder as the edge's gateway.transcoder prints: every field, proto or JSON names."""
    return {
        "@type": TRANSCODER_TYPE,
        "proto_descriptor_bin": descriptor_set_base64(),
        "services": sorted({s.full_name for s in services}),
        # Routing is ours (the REST routes below name the cluster); keep the matched route.
        "match_incoming_request_route": True,
        "print_options": {
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": proto_field_names,
        },
        # A REST route leads to a gRPC cluster: what cannot be transcoded must not pass as is.
        "request_validation_options": {"reject_unknown_method": True, "reject_unknown_query_parameters": True},
        # Gives a failed call a JSON body, which errors.lua replaces with the services' own.
        "convert_grpc_status": True,
    }


def _disabled(*filters: str) -> dict[str, Any]:
    return {
        name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True} for name in filters
    }


def _rest_route(route: RestRoute) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": f"{route.verb} {route.template}",
        "match": {
            "safe_regex": {"regex": route.regex},
            "headers": [{"name": ":method", "string_match": {"exact": route.verb}}],
        },
        "route": {"cluster": route.service.cluster, "timeout": REST_TIMEOUT},
    }
    if route.response_key:
        # errors.lua answers with this key's value alone (the rule's response_body).
        entry["metadata"] = {"filter_metadata": {LUA: {"response_key": route.response_key}}}
    if not route.service.proto_field_names:
        # The stats service prints lowerCamelCase, as the edge does for it.
        entry["typed_per_filter_config"] = {TRANSCODER: transcoder_config([route.service], False)}
    return entry


def _edge_route(name: str, match: dict[str, Any], timeout: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "route": {
            "cluster": "edge",
            "timeout": timeout,
            "idle_timeout": EDGE_IDLE_TIMEOUT,
            # Only failures before the request reached the edge are safe to send again.
            "retry_policy": {"retry_on": "connect-failure,reset-before-request", "num_retries": 2},
        },
        # The edge answers in the public shape itself: no transcoding, no rewriting.
        "typed_per_filter_config": _disabled(LUA, TRANSCODER),
    }


def public_routes() -> list[dict[str, Any]]:
    blocked = [
        {
            "name": f"internal {path}",
            "match": {"path": path},
            "direct_response": {"status": 404},
            "typed_per_filter_config": _disabled(LUA, TRANSCODER),
        }
        for path in INTERNAL_ONLY_PATHS
    ]
    streaming = [_edge_route(path, {"path": path}, "0s") for path in STREAMING_PATHS]
    # Everything else the edge serves (models, embeddings, the dashboard, seed 002's
    # API, and its own 404s), with a deadline past the edge's own.
    rest = [_edge_route("edge", {"prefix": "/"}, "660s")]
    return [*blocked, *(_rest_route(route) for route in rest_routes()), *streaming, *rest]


def public_transcoder() -> dict[str, Any]:
    """The filter's base config: the proto-named services (the stats route overrides it)."""
    return transcoder_config([s for s in TRANSCODED if s.proto_field_names], True)


def internal_routes() -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for cluster, prefixes in GRPC_PREFIXES.items():
        routes += [
            {"match": {"prefix": prefix, "grpc": {}}, "route": {"cluster": cluster, "timeout": "0s"}}
            for prefix in prefixes
        ]
    for prefix in SHARED_PREFIXES:
        for cluster in GRPC_PREFIXES:
            header = {"name": UPSTREAM_HEADER, "string_match": {"exact": cluster}}
            routes.append(
                {
                    "match": {"prefix": prefix, "grpc": {}, "headers": [header]},
                    "route": {"cluster": cluster, "timeout": "0s"},
                }
            )
        routes.append(
            {"match": {"prefix": prefix, "grpc": {}}, "route": {"cluster": DEFAULT_SHARED_UPSTREAM, "timeout": "0s"}}
        )
    return routes
