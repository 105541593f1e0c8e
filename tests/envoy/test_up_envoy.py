"""`interlock up --envoy`: plain HTTP only on loopback, TLS flags only with Envoy, and
what stack.json says of the running proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.envoy_stack import start_envoy_stack
from tests.support.stack import free_port

pytestmark = pytest.mark.e2e


def up(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    refused = up("--envoy", "--host", "0.0.0.0", "--port", str(free_port()), data_dir=tmp_path)
    assert refused.returncode == 2
    assert "plain HTTP on a non-loopback address" in refused.stdout
    assert not (tmp_path / "stack.json").exists()


def test_tls_flags_need_envoy(tmp_path: Path) -> None:
    refused = up("--tls-cert", "a.crt", "--tls-key", "a.key", data_dir=tmp_path)
    assert refused.returncode == 2
    assert "need --envoy" in refused.stderr


def test_plain_http_on_loopback(tmp_path: Path) -> None:
    with start_envoy_stack(tmp_path, tls=False) as stack:
        assert stack.url.startswith("http://127.0.0.1:")
        assert stack.ca_cert is None
        layout = json.loads((tmp_path / "data" / "stack.json").read_text())
        assert layout["public"] == stack.url
        assert layout["edge"] == stack.edge_url != stack.url
        envoy = layout["envoy"]
        assert set(envoy) == {"url", "grpc", "probe", "admin", "config", "access_log"}
        assert {"envoy", "edge", "catalog"} <= set(layout["pids"])
        assert httpx.get(envoy["probe"], timeout=5).status_code == 200
        reply = httpx.get(f"{stack.url}/v1/models", headers=stack.headers(), timeout=10)
        assert reply.status_code == 200
        assert reply.headers["server"] == "interlock"
        # The edge behind Envoy listens on loopback only.
        assert stack.edge_url.startswith("http://127.0.0.1:")
