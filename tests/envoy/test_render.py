"""The rendered Envoy config: the cluster profile's fixed contract with k8s/, the local
profile's loopback rule, the embedded descriptor set, and real `envoy --mode validate`."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.app import ADMIN_SERVICES, STATS_SERVICES, USAGE_SERVICES
from gateway.envoy import bootstrap, build_options
from gateway.envoy.options import DEFAULT_MAX_BODY_BYTES
from gateway.transcoder import bindings
from tests.support.envoy_stack import make_certificates, render, validate

LOCAL_UPSTREAMS = ["--edge", "127.0.0.1:18080", "--catalog", "127.0.0.1:15051", "--router", "127.0.0.1:15052"]


def cluster_config() -> dict[str, Any]:
    return bootstrap(build_options("cluster", {}, DEFAULT_MAX_BODY_BYTES))


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def socket(item: dict[str, Any]) -> tuple[str, int]:
    address = item["socket_address"]
    return address["address"], address["port_value"]


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def test_the_cluster_profile_defaults_are_the_k8s_contract() -> None:
    config = cluster_config()
    clusters = by_name(config["static_resources"]["clusters"])
    expected = {
        "edge": ("edge", 8080),
        "catalog": ("catalog", 50051),
        "router": ("router", 50052),
        "ratelimit": ("ratelimit", 50053),
        "usage": ("usage", 50054),
    }
    assert set(clusters) == set(expected)
    for name, address in expected.items():
        cluster = clusters[name]
        assert "type" not in cluster  # the DNS cluster extension instead of the deprecated STRICT_DNS fields
        dns = cluster["cluster_type"]
        assert dns["name"] == "envoy.clusters.dns" and dns["typed_config"]["respect_dns_ttl"] is True
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert socket(endpoint["address"]) == address
        protocol = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        (check,) = cluster["health_checks"]
        if name == "edge":
            assert "http_protocol_options" in protocol["explicit_http_config"]
            assert check["http_health_check"] == {"path": "/healthz"}
        else:
            assert "http2_protocol_options" in protocol["explicit_http_config"]
            assert check["grpc_health_check"] == {}

    listeners = by_name(config["static_resources"]["listeners"])
    assert socket(listeners["public"]["address"]) == ("0.0.0.0", 8443)
    tls = listeners["public"]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    (certificate,) = tls["tls_certificates"]
    assert certificate["certificate_chain"] == {"filename": "/etc/envoy/tls/tls.crt"}
    assert certificate["private_key"] == {"filename": "/etc/envoy/tls/tls.key"}
    assert socket(listeners["internal_grpc"]["address"]) == ("0.0.0.0", 8081)
    assert "transport_socket" not in listeners["internal_grpc"]["filter_chains"][0]
    assert hcm(listeners["internal_grpc"])["codec_type"] == "HTTP2"
    assert socket(listeners["probe"]["address"]) == ("0.0.0.0", 9902)
    health = hcm(listeners["probe"])["http_filters"][0]
    assert health["name"] == "envoy.filters.http.health_check"
    assert health["typed_config"]["pass_through_mode"] is False
    assert health["typed_config"]["headers"] == [{"name": ":path", "string_match": {"exact": "/ready"}}]
    assert socket(config["admin"]["address"]) == ("127.0.0.1", 9901)
    (log,) = hcm(listeners["public"])["access_log"]
    assert log["typed_config"]["path"] == "/dev/stdout"
    assert "json_format" in log["typed_config"]["log_format"]


def test_the_public_listener_settings() -> None:
    public = hcm(by_name(cluster_config()["static_resources"]["listeners"])["public"])
    assert public["use_remote_address"] is True
    assert public["xff_num_trusted_hops"] == 0
    assert public["generate_request_id"] is True
    assert public["preserve_external_request_id"] is True
    assert public["always_set_request_id_in_response"] is True
    filters = by_name(public["http_filters"])
    ratelimit = filters["envoy.filters.http.ratelimit"]["typed_config"]
    assert ratelimit["domain"] == "interlock"
    assert ratelimit["failure_mode_deny"] is False
    assert ratelimit["rate_limited_as_resource_exhausted"] is True
    # Envoy's own x-ratelimit headers would be appended beside the edge's (per key) on every
    # answer; its 429s carry the ratelimit service's headers instead.
    assert ratelimit["enable_x_ratelimit_headers"] == "OFF"
    assert ratelimit["rate_limit_service"]["transport_api_version"] == "V3"
    assert ratelimit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "ratelimit"
    assert filters["envoy.filters.http.buffer"]["typed_config"]["max_request_bytes"] == 10 * 1024 * 1024
    # The access log never names the credential headers.
    fields = public["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert not any("AUTHORIZATION" in str(v).upper() or "API-KEY" in str(v).upper() for v in fields.values())
    # Envoy's own replies in the public shape, except 429 (the ratelimit service writes that body).
    mappers = public["local_reply_config"]["mappers"]
    general = [m for m in mappers if "status_code_filter" in m["filter"]]
    messages_api = [m for m in mappers if "and_filter" in m["filter"]]
    statuses = [m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] for m in general]
    assert {404, 413, 503} <= set(statuses)
    assert 429 not in statuses
    # On the Messages API's paths the same replies come first, in Anthropic's error shape.
    assert len(messages_api) == len(general) and mappers.index(messages_api[-1]) < mappers.index(general[0])
    status_filter, path_filter = messages_api[0]["filter"]["and_filter"]["filters"]
    assert path_filter["header_filter"]["header"] == {"name": ":path", "string_match": {"prefix": "/v1/messages"}}
    assert status_filter == general[0]["filter"]
    assert messages_api[0]["body_format_override"]["json_format"]["type"] == "error"


def routes_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    public = hcm(by_name(config["static_resources"]["listeners"])["public"])
    return public["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


def test_streaming_routes_have_no_deadline_only_an_idle_timeout() -> None:
    routes = by_name(routes_of(cluster_config()))
    for path in ("/v1/chat/completions", "/v1/completions"):
        route = routes[path]["route"]
        assert route["cluster"] == "edge"
        assert route["timeout"] == "0s"
        assert route["idle_timeout"].endswith("s") and int(route["idle_timeout"][:-1]) > 600
        # Nothing buffers or rewrites the edge's answers.
        assert set(routes[path]["typed_per_filter_config"]) == {
            "envoy.filters.http.lua",
            "envoy.filters.http.grpc_json_transcoder",
        }
    assert routes["edge"]["match"] == {"prefix": "/"}


def test_every_rest_binding_of_the_edge_is_a_transcoded_route() -> None:
    routes = by_name(routes_of(cluster_config()))
    expected = {
        **{f"{b.verb} {b.path}": "catalog" for s in ADMIN_SERVICES for b in bindings(s)},
        **{f"{b.verb} {b.path}": "usage" for s in (*USAGE_SERVICES, *STATS_SERVICES) for b in bindings(s)},
    }
    assert expected, "no bindings: the comparison would be empty"
    for name, cluster in expected.items():
        assert routes[name]["route"]["cluster"] == cluster, name
        verb = routes[name]["match"]["headers"][0]["string_match"]["exact"]
        assert name.startswith(verb + " ")
    stats = routes["POST /sdk/models/stats"]
    override = stats["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"]
    assert override["print_options"]["preserve_proto_field_names"] is False
    assert stats["metadata"]["filter_metadata"]["envoy.filters.http.lua"] == {"response_key": "results"}
    assert routes["GET /v1/keys/{id}"]["metadata"]["filter_metadata"]["envoy.filters.http.lua"] == {
        "response_key": "api_key"
    }


def test_the_descriptor_set_is_self_contained() -> None:
    public = hcm(by_name(cluster_config()["static_resources"]["listeners"])["public"])
    transcoder = by_name(public["http_filters"])["envoy.filters.http.grpc_json_transcoder"]["typed_config"]
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(transcoder["proto_descriptor_bin"])).file
    names = [f.name for f in files]
    for file in files:
        # Imports come first, so Envoy builds the pool file by file.
        assert all(names.index(dep) < names.index(file.name) for dep in file.dependency), file.name
    assert {"google/api/http.proto", "google/api/httpbody.proto", "google/rpc/status.proto"} <= set(names)
    services = {f"{f.package}.{s.name}": s for f in files for s in f.service}
    assert set(transcoder["services"]) == {"interlock.catalog.v1.AdminService", "interlock.usage.v1.UsageService"}
    rules = [m.options.Extensions[annotations_pb2.http] for s in services.values() for m in s.method]
    assert any(rule.get == "/v1/keys/{id}" for rule in rules)
    # Envoy refuses response_body on non-HttpBody fields: the routes carry it instead.
    assert not any(rule.response_body for rule in rules)


def test_rendering_is_deterministic() -> None:
    assert cluster_config() == cluster_config()


def test_both_profiles_pass_envoys_validation(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    configs = {
        # The cluster defaults as they are, but for certificate files that exist here.
        "cluster": render(["--profile", "cluster", *tls], tmp_path / "cluster.yaml"),
        "local": render(["--profile", "local", *LOCAL_UPSTREAMS], tmp_path / "local.yaml"),
        "local-tls": render(["--profile", "local", *LOCAL_UPSTREAMS, *tls], tmp_path / "local-tls.yaml"),
    }
    for name, path in configs.items():
        result = validate(path)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "OK" in result.stdout + result.stderr


def render_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.envoy", "render", *args], capture_output=True, text=True, check=False
    )


def test_the_local_profile_keeps_plain_http_on_loopback(tmp_path: Path) -> None:
    refused = render_cli("--profile", "local", "--listen", "0.0.0.0:8080", *LOCAL_UPSTREAMS)
    assert refused.returncode == 2
    assert "plain HTTP on a non-loopback address" in refused.stderr
    certs = make_certificates(tmp_path)
    allowed = render_cli(
        "--profile", "local", "--listen", "0.0.0.0:8443", *LOCAL_UPSTREAMS,
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "DownstreamTlsContext" in allowed.stdout
    assert render_cli("--profile", "local", *LOCAL_UPSTREAMS).returncode == 0
    # The admin interface never leaves loopback, in either profile.
    assert render_cli("--profile", "cluster", "--admin", "0.0.0.0:9901").returncode == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "local"], "needs --edge"),
        (["--profile", "local", "--edge", "edge:8080"], "must be an IP address"),
        (["--profile", "local", *LOCAL_UPSTREAMS, "--tls-cert", "x.crt"], "go together"),
        (["--profile", "cluster", "--listen", "8443"], "HOST:PORT"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    result = render_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
