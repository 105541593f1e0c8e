"""Opens the job store the settings name: PostgreSQL beside the ledger when a URL is set, else SQLite."""

from __future__ import annotations

from services.usage.jobs.postgres import PostgresJobStore
from services.usage.jobs.sqlite import SqliteJobStore
from services.usage.jobs.store import JobStore
from services.usage.settings import UsageSettings


def open_job_store(settings: UsageSettings) -> JobStore:
    if settings.database_url:
        return PostgresJobStore(settings.database_url)
    return SqliteJobStore(settings.jobs_database)
