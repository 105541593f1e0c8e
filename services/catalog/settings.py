"""Catalog settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import keys
from services.common.env import SettingsError, get_float, get_str

DEFAULT_CONFIG = Path(__file__).with_name("default_catalog.yaml")


@dataclass(frozen=True)
class CatalogSettings:
    listen: str
    config_path: Path
    # SQLite file holding projects and keys (used when database_url is empty).
    database: Path
    # postgresql://... to keep projects and keys in PostgreSQL instead.
    database_url: str
    # PostgreSQL schema holding the tables.
    database_schema: str
    # Keyed hash of the admin key; empty disables the admin API.
    admin_key_hash: str
    # How often to look for key changes made by other catalog replicas.
    keys_poll_seconds: float
    # How often to look for edits of the catalog file.
    config_poll_seconds: float
    # Server-side secret that keys the hash of every API key.
    key_pepper: bytes
    # When set, this secret is (re)registered as the key with id "bootstrap".
    bootstrap_key: str
    # The environment, for telling which provider key variables are set.
    provider_env: Mapping[str, str]
    grace_seconds: float
    log_level: str
    # host:port serving Prometheus /metrics over HTTP; empty (the default): none.
    metrics_listen: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CatalogSettings:
        data_dir = Path(get_str(env, "INTERLOCK_DATA_DIR", ".interlock"))
        pepper = get_str(env, "INTERLOCK_KEY_PEPPER", "")
        if not pepper:
            raise SettingsError("INTERLOCK_KEY_PEPPER must be set (the server-side secret for key hashes)")
        settings = cls(
            listen=get_str(env, "INTERLOCK_CATALOG_LISTEN", "127.0.0.1:50051"),
            metrics_listen=get_str(env, "INTERLOCK_CATALOG_METRICS_LISTEN", ""),
            config_path=Path(get_str(env, "INTERLOCK_CATALOG_CONFIG", str(DEFAULT_CONFIG))),
            database=Path(get_str(env, "INTERLOCK_CATALOG_DB", str(data_dir / "catalog.db"))),
            database_url=get_str(env, "INTERLOCK_CATALOG_DATABASE_URL", ""),
            database_schema=get_str(env, "INTERLOCK_CATALOG_DATABASE_SCHEMA", "interlock"),
            # Only the keyed hash is kept: the admin key itself is not held in memory.
            admin_key_hash=keys.hash_secret(admin, pepper.encode())
            if (admin := get_str(env, "INTERLOCK_ADMIN_KEY", ""))
            else "",
            keys_poll_seconds=get_float(env, "INTERLOCK_CATALOG_KEYS_POLL_SECONDS", 0.5),
            config_poll_seconds=get_float(env, "INTERLOCK_CATALOG_CONFIG_POLL_SECONDS", 1.0),
            key_pepper=pepper.encode(),
            bootstrap_key=get_str(env, "INTERLOCK_BOOTSTRAP_KEY", ""),
            provider_env=dict(env),
            grace_seconds=get_float(env, "INTERLOCK_GRACE_SECONDS", 5.0),
            log_level=get_str(env, "INTERLOCK_LOG_LEVEL", "info"),
        )
        for name, value in (
            ("INTERLOCK_CATALOG_KEYS_POLL_SECONDS", settings.keys_poll_seconds),
            ("INTERLOCK_CATALOG_CONFIG_POLL_SECONDS", settings.config_poll_seconds),
        ):
            if value <= 0:
                raise SettingsError(f"{name}={value} must be greater than 0")
        return settings
