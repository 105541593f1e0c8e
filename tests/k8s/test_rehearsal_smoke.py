"""The dev overlay, rehearsed on this machine (tests/support/rehearsal.py): its containers'
own commands and environment behind its own Envoy config answer the openai SDK over TLS."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from tests.support import manifests
from tests.support.fronted import FrontedStack
from tests.support.manifests import REPO, Manifests
from tests.support.rehearsal import PG_ADMIN_URL, rehearse

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontedStack]:
    with rehearse(tmp_path_factory.mktemp("rehearsal"), "dev") as stack:
        yield stack


def test_chat_completion_through_envoy(dev: FrontedStack) -> None:
    with (
        httpx.Client(verify=ssl.create_default_context(cafile=dev.ca_cert)) as http,
        openai.OpenAI(base_url=dev.base_url, api_key=dev.api_key, http_client=http, max_retries=0) as client,
    ):
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert reply.model == "demo-chat"
    # Envoy carried it (its access log, made a file by the rehearsal) to the edge.
    logged = [json.loads(line) for line in Path(dev.access_log).read_text().splitlines() if line.strip()]
    assert any(entry["upstream_cluster"] == "edge" and entry["status"] == 200 for entry in logged), logged


def test_internal_grpc_listener_reaches_catalog(dev: FrontedStack) -> None:
    with grpc.insecure_channel(dev.grpc_addr) as channel:
        reply = catalog_pb2_grpc.CatalogServiceStub(channel).ListModels(
            catalog_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {dev.api_key}")], timeout=10
        )
    assert "demo-chat" in {model.id for model in reply.models}


def test_ip_rules_come_from_the_overlay(dev: FrontedStack) -> None:
    """The FrontedStack's limits are the dev overlay's: its kustomization's literals."""
    text = (REPO / "k8s" / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert f"INTERLOCK_RATELIMIT_IP_RPM={dev.ip_rpm}" in text
    assert f"INTERLOCK_RATELIMIT_ANONYMOUS_RPM={dev.anonymous_rpm}" in text
    assert dev.ip_rpm > 0
    assert dev.anonymous_rpm > 0


def _envoy_prestop_drains(work_dir: Path) -> None:
    """Run Envoy's preStop hook from the manifest (admin address made local, as the rehearsal
    does for every address): /ready must turn 503 so the Service stops sending new clients."""
    config = yaml.safe_load((work_dir / "envoy" / "config" / "envoy.yaml").read_text())
    admin = config["admin"]["address"]["socket_address"]
    (probe,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "probe"]
    ready = f"http://127.0.0.1:{probe['address']['socket_address']['port_value']}/ready"
    assert httpx.get(ready, timeout=5).status_code == 200
    envoy = Manifests(manifests.render("overlays/dev")).workload("envoy")
    hook = list(envoy.containers[0]["lifecycle"]["preStop"]["exec"]["command"])
    hook = [arg.replace("127.0.0.1:9901", f"127.0.0.1:{admin['port_value']}") for arg in hook]
    assert hook[0] == "python"
    # It sleeps through the drain afterwards; what matters here is what it asked Envoy.
    process = subprocess.Popen([sys.executable, *hook[1:]])
    try:
        deadline = time.monotonic() + 10
        while httpx.get(ready, timeout=5).status_code != 503:
            assert process.poll() is None, "the preStop hook failed"
            assert time.monotonic() < deadline, "/ready never turned 503"
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()


def test_shutdown_drains_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Envoy's preStop hook drains it; on exit every process is stopped and the run's database dropped."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:

        def databases() -> set[str]:
            rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rehearsal_%'").fetchall()
            return {row[0] for row in rows}

        before = databases()
        with rehearse(tmp_path) as stack:
            assert len(databases() - before) == 1
            assert httpx.get(f"{stack.edge_url}/healthz", timeout=5).status_code == 200
            _envoy_prestop_drains(tmp_path)
        assert databases() - before == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.edge_url}/healthz", timeout=5)
    with pytest.raises(grpc.RpcError), grpc.insecure_channel(stack.grpc_addr) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
