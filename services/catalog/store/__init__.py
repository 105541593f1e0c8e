"""Projects and API keys: the records and the storage interface.

Secrets never reach a store: only their keyed hash and masked form. Every
write bumps a change counter, so catalog replicas sharing one database can
notice each other's writes cheaply (see `version`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

BUDGET_PERIODS = ("total", "monthly")


@dataclass(frozen=True)
class ProjectRecord:
    id: str
    name: str
    created_at: int
    # Limits shared by all of the project's keys together; 0 means none.
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_usd: float = 0.0
    # "total" or "monthly"; empty when there is no cap.
    budget_period: str = ""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    project: str
    secret_hash: str
    masked: str
    models: list[str] = field(default_factory=list)
    plan: str = ""
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    burst: int = 0
    budget_usd: float = 0.0
    budget_period: str = ""
    # Unix seconds; 0 means never.
    expires_at: int = 0
    revoked: bool = False
    created_at: int = 0


# The key columns an update may change, and nothing else.
UPDATABLE = frozenset(
    {
        "name",
        "models",
        "plan",
        "requests_per_minute",
        "tokens_per_minute",
        "burst",
        "budget_usd",
        "budget_period",
        "expires_at",
        "revoked",
        "secret_hash",
        "masked",
    }
)


# The project columns an update may change, and nothing else.
PROJECT_UPDATABLE = frozenset({"name", "requests_per_minute", "tokens_per_minute", "budget_usd", "budget_period"})


class DuplicateError(Exception):
    """A record with that id (or that secret hash) already exists."""


class KeyStore(Protocol):
    def create_project(self, project: ProjectRecord) -> None:
        """Raises DuplicateError if the id is taken."""
        ...

    def list_projects(self) -> list[ProjectRecord]: ...

    def get_project(self, project_id: str) -> ProjectRecord | None: ...

    def update_project(self, project_id: str, changes: dict[str, object]) -> ProjectRecord | None:
        """Apply changes (keys from PROJECT_UPDATABLE); None if there is no such project."""
        ...

    def create_key(self, key: KeyRecord) -> None:
        """Raises DuplicateError if the id or secret hash is taken."""
        ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def list_keys(self, project: str = "", include_revoked: bool = True) -> list[KeyRecord]: ...

    def update_key(self, key_id: str, changes: dict[str, object]) -> KeyRecord | None:
        """Apply changes (keys from UPDATABLE); None if there is no such key."""
        ...

    def version(self) -> int:
        """A number that grows with every write, by any process sharing the database."""
        ...

    def close(self) -> None: ...
