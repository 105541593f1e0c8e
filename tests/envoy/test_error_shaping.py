"""errors.lua against a catalog that fails in every way a gRPC server can: our error
as a trailers-only answer, our error after the initial metadata, and failures without
our trailers (as a peer that is not ours sends them). Each reaches the REST client in
the public shape with the request's id. The catalog here is a plain grpcio server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.catalog.v1 import catalog_pb2_grpc
from services.common.errors import NotFoundError, rest_trailers, to_status
from tests.support.envoy_stack import render, run_envoy
from tests.support.stack import free_port

pytestmark = pytest.mark.e2e


class FailingAdmin(catalog_pb2_grpc.AdminServiceServicer):
    """GetKey fails as its id says; ListKeys answers 201 through x-http-code."""

    def GetKey(self, request: cpb.GetKeyRequest, context: grpc.ServicerContext) -> cpb.GetKeyResponse:
        request_id = dict(context.invocation_metadata()).get("x-request-id", "")
        if request.id.startswith("late-"):
            context.send_initial_metadata((("x-started", "1"),))
        if request.id.endswith("ours"):
            error = NotFoundError(f"No API key with id '{request.id}'. Ünïcode too.", code="key_not_found", param="id")
            status = to_status(error)
            context.set_trailing_metadata((*status.trailing_metadata, *rest_trailers(error, str(request_id))))
            context.abort(status.code, status.details)
        if request.id.endswith("bare"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a peer's own words")
        return cpb.GetKeyResponse(api_key=cpb.KeyInfo(id=request.id, name="found"))

    def ListKeys(self, request: cpb.ListKeysRequest, context: grpc.ServicerContext) -> cpb.ListKeysResponse:
        context.send_initial_metadata((("x-http-code", "201"),))
        return cpb.ListKeysResponse(keys=[cpb.KeyInfo(id="k1", name="one")])


@dataclass
class Fronted:
    url: str


@pytest.fixture(scope="module")
def fronted_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronted]:
    work = tmp_path_factory.mktemp("error-shaping")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    catalog_pb2_grpc.add_AdminServiceServicer_to_server(FailingAdmin(), server)  # type: ignore[abstract]
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    catalog_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ports = {name: free_port() for name in ("listen", "grpc", "probe", "admin")}
    args = ["--profile", "local", "--access-log", str(work / "access.log")]
    args += ["--listen", f"127.0.0.1:{ports['listen']}", "--grpc-listen", f"127.0.0.1:{ports['grpc']}"]
    args += ["--probe-listen", f"127.0.0.1:{ports['probe']}", "--admin", f"127.0.0.1:{ports['admin']}"]
    args += ["--catalog", f"127.0.0.1:{catalog_port}"]
    for name in ("edge", "router", "ratelimit", "usage"):
        args += [f"--{name}", f"127.0.0.1:{free_port()}"]
    config = render(args, work / "envoy.yaml")
    try:
        with run_envoy(config, f"http://127.0.0.1:{ports['probe']}/ready", work / "envoy.log"):
            yield Fronted(f"http://127.0.0.1:{ports['listen']}")
    finally:
        server.stop(None)


def get(fronted: Fronted, path: str) -> tuple[httpx.Response, dict[str, object]]:
    reply = httpx.get(fronted.url + path, timeout=10)
    assert reply.headers["content-type"] == "application/json", reply.text
    assert not any(name.startswith(("grpc-", "x-interlock-", "x-http-code")) for name in reply.headers)
    body = reply.json()
    assert body.get("request_id", reply.headers["x-request-id"]) == reply.headers["x-request-id"]
    return reply, body


@pytest.mark.parametrize("key_id", ["ours", "late-ours"])
def test_our_error_becomes_the_answer(fronted_fake: Fronted, key_id: str) -> None:
    reply, body = get(fronted_fake, f"/v1/keys/{key_id}")
    assert reply.status_code == 404
    assert body == {
        "error": {
            "type": "not_found_error",
            "message": f"No API key with id '{key_id}'. Ünïcode too.",
            "param": "id",
            "code": "key_not_found",
        },
        "request_id": reply.headers["x-request-id"],
        "status": 404,
    }


@pytest.mark.parametrize("key_id", ["bare", "late-bare"])
def test_a_failure_without_our_trailers_is_still_in_the_public_shape(fronted_fake: Fronted, key_id: str) -> None:
    reply, body = get(fronted_fake, f"/v1/keys/{key_id}")
    assert reply.status_code == 403
    assert body == {
        "error": {
            "type": "permission_error",
            "message": "permission denied",
            "param": None,
            "code": "permission_denied",
        },
        "request_id": reply.headers["x-request-id"],
        "status": 403,
    }


def test_success_unwraps_the_response_body_and_takes_the_http_code(fronted_fake: Fronted) -> None:
    reply, body = get(fronted_fake, "/v1/keys/plain")
    assert reply.status_code == 200
    assert body["id"] == "plain" and body["name"] == "found"
    listed, keys = get(fronted_fake, "/v1/keys")
    assert listed.status_code == 201
    assert [key["id"] for key in keys["keys"]] == ["k1"]  # type: ignore[index]
