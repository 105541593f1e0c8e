"""Conversions between key/project records and their protobuf forms."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from interlock.catalog.v1 import catalog_pb2 as pb
from services.catalog.store import KeyRecord, ProjectRecord


def timestamp(seconds: int) -> Timestamp | None:
    return Timestamp(seconds=seconds) if seconds else None


def key_info(record: KeyRecord) -> pb.KeyInfo:
    """The listing form: masked, never the hash."""
    return pb.KeyInfo(
        id=record.id,
        name=record.name,
        project=record.project,
        masked=record.masked,
        models=record.models,
        plan=record.plan,
        requests_per_minute=record.requests_per_minute,
        tokens_per_minute=record.tokens_per_minute,
        burst=record.burst,
        budget_usd=record.budget_usd,
        budget_period=record.budget_period,
        expires_at=timestamp(record.expires_at),
        revoked=record.revoked,
        created_at=timestamp(record.created_at),
    )


def api_key(record: KeyRecord) -> pb.ApiKey:
    """The form the edge caches to authenticate (keyed hash, never the secret)."""
    return pb.ApiKey(
        id=record.id,
        name=record.name,
        project=record.project,
        secret_hash=record.secret_hash,
        masked=record.masked,
        models=record.models,
        plan=record.plan,
        revoked=record.revoked,
        expires_at=record.expires_at,
        requests_per_minute=record.requests_per_minute,
        tokens_per_minute=record.tokens_per_minute,
        burst=record.burst,
        budget_usd=record.budget_usd,
        budget_period=record.budget_period,
    )


def project(record: ProjectRecord) -> pb.Project:
    return pb.Project(
        id=record.id,
        name=record.name,
        created_at=timestamp(record.created_at),
        requests_per_minute=record.requests_per_minute,
        tokens_per_minute=record.tokens_per_minute,
        budget_usd=record.budget_usd,
        budget_period=record.budget_period,
    )


@dataclass(frozen=True)
class KeySnapshot:
    """What WatchKeys sends: every key (in the edge's form) and every project with its limits."""

    keys: tuple[pb.ApiKey, ...]
    projects: tuple[pb.Project, ...]

    @classmethod
    def of(cls, keys: Iterable[KeyRecord], projects: Iterable[ProjectRecord]) -> KeySnapshot:
        return cls(tuple(api_key(k) for k in keys), tuple(project(p) for p in projects))
