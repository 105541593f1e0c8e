"""A short-lived Envoy whose upstreams are all down: its 503s are in the public error
shape, and its readiness probe answers 200 until Envoy is told to fail (draining)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.envoy_stack import render, run_envoy
from tests.support.stack import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Lonely:
    url: str
    probe: str
    admin: str


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lonely]:
    work = tmp_path_factory.mktemp("lonely-envoy")
    ports = {name: free_port() for name in ("listen", "grpc", "probe", "admin")}
    # Nothing listens on these: every upstream is unreachable.
    dead = {name: f"127.0.0.1:{free_port()}" for name in ("edge", "catalog", "router", "ratelimit", "usage")}
    args = ["--profile", "local", "--access-log", str(work / "access.log")]
    args += ["--listen", f"127.0.0.1:{ports['listen']}", "--grpc-listen", f"127.0.0.1:{ports['grpc']}"]
    args += ["--probe-listen", f"127.0.0.1:{ports['probe']}", "--admin", f"127.0.0.1:{ports['admin']}"]
    for name, address in dead.items():
        args += [f"--{name}", address]
    config = render(args, work / "envoy.yaml")
    probe = f"http://127.0.0.1:{ports['probe']}/ready"
    with run_envoy(config, probe, work / "envoy.log"):
        yield Lonely(f"http://127.0.0.1:{ports['listen']}", probe, f"http://127.0.0.1:{ports['admin']}")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/keys"), ("POST", "/sdk/models/stats")],
)
def test_an_unreachable_upstream_is_a_503_in_the_public_shape(lonely: Lonely, method: str, path: str) -> None:
    reply = httpx.request(method, lonely.url + path, json={} if method == "POST" else None, timeout=10)
    assert reply.status_code == 503, reply.text
    body = reply.json()
    assert body == {
        "error": {
            "type": "upstream_error",
            "message": "a gateway service is unavailable",
            "param": None,
            "code": "service_unavailable",
        },
        "request_id": reply.headers["x-request-id"],
        "status": 503,
    }
    # The ratelimit service is down too: Envoy admits (fails open) and only the upstream is missed.
    assert "x-envoy-ratelimited" not in reply.headers


def test_on_the_messages_api_envoys_503_is_in_anthropics_shape(lonely: Lonely) -> None:
    reply = httpx.post(lonely.url + "/v1/messages", json={}, timeout=10)
    assert reply.status_code == 503, reply.text
    assert reply.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "a gateway service is unavailable"},
        "request_id": reply.headers["x-request-id"],
    }


def test_the_probe_fails_once_envoy_is_told_to_drain(lonely: Lonely) -> None:
    # Ready although its upstreams are down: readiness is Envoy's own.
    assert httpx.get(lonely.probe, timeout=5).status_code == 200
    assert httpx.get(lonely.probe.replace("/ready", "/other"), timeout=5).status_code == 404
    assert httpx.post(f"{lonely.admin}/healthcheck/fail", timeout=5).status_code == 200
    assert httpx.get(lonely.probe, timeout=5).status_code == 503
    assert httpx.post(f"{lonely.admin}/healthcheck/ok", timeout=5).status_code == 200
    assert httpx.get(lonely.probe, timeout=5).status_code == 200
