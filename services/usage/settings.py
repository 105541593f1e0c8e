"""Usage settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import keys
from services.common.env import SettingsError, get_float, get_str


@dataclass(frozen=True)
class UsageSettings:
    listen: str
    # SQLite file of the ledger, used when database_url is empty (the embedded default).
    database: Path
    # postgresql://… to keep the ledger in PostgreSQL instead.
    database_url: str
    catalog_addr: str
    # Server-side secret keying API key hashes; must equal the catalog's.
    key_pepper: bytes
    # Keyed hash of the admin key (the key itself is not kept); empty: no admin caller.
    admin_key_hash: str
    grace_seconds: float
    log_level: str
    # host:port serving Prometheus /metrics over HTTP; empty (the default): none.
    metrics_listen: str = ""
    # The router, which the job service calls to run jobs and agent turns.
    router_addr: str = "127.0.0.1:50052"
    # SQLite file of jobs and agent sessions, used when database_url is empty.
    jobs_database: Path = Path(".interlock/jobs.db")
    # Finished jobs and idle sessions are deleted this long after their last update.
    jobs_retention_hours: float = 24.0
    # Deadline of each router call a job makes.
    jobs_call_timeout_seconds: float = 600.0
    # A job whose runner has not renewed its lease for this long is run again by another.
    jobs_lease_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UsageSettings:
        data_dir = Path(get_str(env, "INTERLOCK_DATA_DIR", ".interlock"))
        pepper = get_str(env, "INTERLOCK_KEY_PEPPER", "")
        if not pepper:
            raise SettingsError("INTERLOCK_KEY_PEPPER must be set (the server-side secret for key hashes)")
        admin = get_str(env, "INTERLOCK_ADMIN_KEY", "")
        database = Path(get_str(env, "INTERLOCK_USAGE_DB", str(data_dir / "usage.db")))
        return cls(
            listen=get_str(env, "INTERLOCK_USAGE_LISTEN", "127.0.0.1:50054"),
            metrics_listen=get_str(env, "INTERLOCK_USAGE_METRICS_LISTEN", ""),
            database=database,
            database_url=get_str(env, "INTERLOCK_USAGE_DATABASE_URL", ""),
            catalog_addr=get_str(env, "INTERLOCK_CATALOG_ADDR", "127.0.0.1:50051"),
            key_pepper=pepper.encode(),
            admin_key_hash=keys.hash_secret(admin, pepper.encode()) if admin else "",
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
            router_addr=get_str(env, "INTERLOCK_ROUTER_ADDR", "127.0.0.1:50052"),
            # Beside the ledger's file, wherever that is.
            jobs_database=Path(get_str(env, "INTERLOCK_JOBS_DB", str(database.parent / "jobs.db"))),
            jobs_retention_hours=get_float(env, "INTERLOCK_JOBS_RETENTION_HOURS", 24.0),
            jobs_call_timeout_seconds=get_float(env, "INTERLOCK_REQUEST_TIMEOUT_SECONDS", 600.0),
            jobs_lease_seconds=get_float(env, "INTERLOCK_JOBS_LEASE_SECONDS", 30.0),
        )
