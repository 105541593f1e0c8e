"""Opens the ledger the settings name: PostgreSQL when a URL is set, else SQLite."""

from __future__ import annotations

from services.usage.settings import UsageSettings
from services.usage.store import EventStore
from services.usage.store.sqlite import SqliteEventStore


def open_store(settings: UsageSettings) -> EventStore:
    return SqliteEventStore(settings.database)
