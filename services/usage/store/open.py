"""Opens the ledger the settings name: PostgreSQL when a URL is set, else SQLite."""

from __future__ import annotations

from services.usage.settings import UsageSettings
from services.usage.store import EventStore
from services.usage.store.postgres import PostgresEventStore
from services.usage.store.sqlite import SqliteEventStore


def open_store(settings: UsageSettings) -> EventStore:
    if settings.database_url:
        return PostgresEventStore(settings.database_url)
    return SqliteEventStore(settings.database)
