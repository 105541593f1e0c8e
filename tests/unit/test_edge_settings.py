"""The edge's mode settings: microservices by default (the Kubernetes base), co-located
with the router's settings read alongside, and a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import EdgeSettings
from services.common.env import SettingsError

BASE = {"INTERLOCK_KEY_PEPPER": "pepper"}


def test_microservices_by_default_without_router_settings() -> None:
    settings = EdgeSettings.from_env(BASE)
    assert settings.mode == "microservices" and settings.router is None
    assert not settings.reuse_port and settings.worker_listen == ""


def test_colocated_reads_the_router_settings_once() -> None:
    settings = EdgeSettings.from_env(
        {
            **BASE,
            "INTERLOCK_EDGE_MODE": "colocated",
            "INTERLOCK_EDGE_REUSE_PORT": "true",
            "INTERLOCK_EDGE_WORKER_LISTEN": "127.0.0.1:9001",
            "INTERLOCK_ROUTER_LISTEN": "127.0.0.1:9002",
            "INTERLOCK_ROUTER_SPOOL_PATH": "/data/spool/edge-1.db",
        }
    )
    assert settings.mode == "colocated" and settings.reuse_port and settings.worker_listen == "127.0.0.1:9001"
    assert settings.router is not None
    assert settings.router.listen == "127.0.0.1:9002"
    assert settings.router.usage_spool_path == Path("/data/spool/edge-1.db")


@pytest.mark.parametrize("mode", ["sidecar", "Colocated", " colocated"])
def test_an_unknown_mode_is_a_settings_error(mode: str) -> None:
    with pytest.raises(SettingsError, match=r"INTERLOCK_EDGE_MODE=.* is not one of microservices, colocated"):
        EdgeSettings.from_env({**BASE, "INTERLOCK_EDGE_MODE": mode})
