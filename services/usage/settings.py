"""Usage settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.env import get_float, get_str


@dataclass(frozen=True)
class UsageSettings:
    listen: str
    database: Path
    grace_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UsageSettings:
        data_dir = Path(get_str(env, "INTERLOCK_DATA_DIR", ".interlock"))
        return cls(
            listen=get_str(env, "INTERLOCK_USAGE_LISTEN", "127.0.0.1:50054"),
            database=Path(get_str(env, "INTERLOCK_USAGE_DB", str(data_dir / "usage.db"))),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )
