"""AdminService: projects and API keys, behind the admin key."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2

from interlock.catalog.v1 import catalog_pb2 as pb
from interlock.catalog.v1 import catalog_pb2_grpc
from services.catalog import records
from services.catalog.guard import AdminGuard
from services.catalog.store import BUDGET_PERIODS, DuplicateError, KeyRecord, KeyStore, ProjectRecord
from services.common import keys
from services.common.clock import Clock
from services.common.errors import InvalidRequestError, NotFoundError

Context = grpc.aio.ServicerContext[Any, Any]
MAX_NAME = 200
MAX_MODELS = 1000
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BOOTSTRAP_ID = "bootstrap"


def _bad(param: str, why: str, code: str = "ERR_INVALID_VALUE") -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' {why}.", code=code, param=param)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]


class AdminServicer(catalog_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        store: KeyStore,
        guard: AdminGuard,
        *,
        plans: Callable[[], list[str]],
        on_changed: Callable[[], Awaitable[None]],
        pepper: bytes,
        clock: Clock,
    ) -> None:
        self._store = store
        self._guard = guard
        self._plans = plans
        # Called after every write, so WatchKeys pushes the new keys and projects.
        self._changed = on_changed
        self._pepper = pepper
        self._clock = clock

    def _authorize(self, context: Context) -> None:
        metadata = context.invocation_metadata() or ()
        self._guard.check([(str(item[0]), item[1]) for item in metadata])

    # ------------------------------------------------------------ validation

    def _check_name(self, name: str) -> str:
        if len(name) > MAX_NAME:
            raise _bad("name", f"must be at most {MAX_NAME} characters")
        return name

    def _check_models(self, models: list[object]) -> list[str]:
        if len(models) > MAX_MODELS:
            raise _bad("models", f"must list at most {MAX_MODELS} entries")
        if not all(isinstance(m, str) and m.strip() and len(m) <= MAX_NAME for m in models):
            raise _bad("models", "must be an array of non-empty model ids or patterns", "ERR_INVALID_TYPE")
        return [str(m).strip() for m in models]

    def _check_plan(self, plan: str) -> str:
        if plan and plan not in self._plans():
            raise _bad("plan", f"must be one of {', '.join(self._plans()) or 'the catalog plans'}")
        return plan

    @staticmethod
    def _check_limit(param: str, value: int) -> int:
        if value < 0:
            raise _bad(param, "must not be negative")
        return value

    @staticmethod
    def _check_budget(budget: float, period: str) -> tuple[float, str]:
        if not math.isfinite(budget) or budget < 0:
            raise _bad("budget_usd", "must be a non-negative number")
        if period and period not in BUDGET_PERIODS:
            raise _bad("budget_period", "must be total or monthly")
        if budget == 0:
            return 0.0, ""
        return budget, period or "total"

    def _check_expiry(self, seconds: int) -> int:
        if seconds and seconds <= self._clock.now():
            raise _bad("expires_at", "must be in the future")
        return seconds

    async def _project_exists(self, project: str) -> None:
        if await asyncio.to_thread(self._store.get_project, project) is None:
            raise _bad("project", f"names no project ('{project}'); create it with POST /v1/projects first")

    async def _existing(self, key_id: str) -> KeyRecord:
        record = await asyncio.to_thread(self._store.get_key, key_id)
        if record is None:
            raise NotFoundError(f"No API key with id '{key_id}'.", code="key_not_found", param="id")
        return record

    async def _existing_project(self, project_id: str) -> ProjectRecord:
        record = await asyncio.to_thread(self._store.get_project, project_id)
        if record is None:
            raise _project_not_found(project_id)
        return record

    def _new_secret(self) -> tuple[str, str, str]:
        secret = keys.new_secret()
        return secret, keys.hash_secret(secret, self._pepper), keys.mask(secret)

    # ------------------------------------------------------------ keys

    async def CreateKey(self, request: pb.CreateKeyRequest, context: Context) -> pb.CreateKeyResponse:
        self._authorize(context)
        project = request.project or "default"
        await self._project_exists(project)
        budget, period = self._check_budget(request.budget_usd, request.budget_period)
        secret, secret_hash, masked = self._new_secret()
        record = KeyRecord(
            id=keys.new_key_id(),
            name=self._check_name(request.name),
            project=project,
            secret_hash=secret_hash,
            masked=masked,
            models=self._check_models(list(request.models)),
            plan=self._check_plan(request.plan),
            requests_per_minute=self._check_limit("requests_per_minute", request.requests_per_minute),
            tokens_per_minute=self._check_limit("tokens_per_minute", request.tokens_per_minute),
            burst=self._check_limit("burst", request.burst),
            budget_usd=budget,
            budget_period=period,
            expires_at=self._check_expiry(request.expires_at.seconds if request.HasField("expires_at") else 0),
            created_at=int(self._clock.now()),
        )
        await asyncio.to_thread(self._store.create_key, record)
        await self._changed()
        return pb.CreateKeyResponse(id=record.id, key=secret, api_key=records.key_info(record))

    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        self._authorize(context)
        found = await asyncio.to_thread(self._store.list_keys, request.project, request.include_revoked)
        return pb.ListKeysResponse(keys=[records.key_info(k) for k in found])

    async def GetKey(self, request: pb.GetKeyRequest, context: Context) -> pb.GetKeyResponse:
        self._authorize(context)
        return pb.GetKeyResponse(api_key=records.key_info(await self._existing(request.id)))

    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: Context) -> pb.UpdateKeyResponse:
        self._authorize(context)
        current = await self._existing(request.id)
        changes: dict[str, object] = {}
        if request.HasField("name"):
            changes["name"] = self._check_name(request.name)
        if request.HasField("models"):
            changes["models"] = self._check_models([_plain(v) for v in request.models.values])
        if request.HasField("plan"):
            changes["plan"] = self._check_plan(request.plan)
        for limit in ("requests_per_minute", "tokens_per_minute", "burst"):
            if request.HasField(limit):
                changes[limit] = self._check_limit(limit, getattr(request, limit))
        if request.HasField("budget_usd") or request.HasField("budget_period"):
            budget = request.budget_usd if request.HasField("budget_usd") else current.budget_usd
            period = request.budget_period if request.HasField("budget_period") else current.budget_period
            changes["budget_usd"], changes["budget_period"] = self._check_budget(budget, period)
        if request.HasField("expires_at"):
            changes["expires_at"] = self._check_expiry(request.expires_at.seconds)
        updated = await asyncio.to_thread(self._store.update_key, request.id, changes)
        if updated is None:
            raise NotFoundError(f"No API key with id '{request.id}'.", code="key_not_found", param="id")
        await self._changed()
        return pb.UpdateKeyResponse(api_key=records.key_info(updated))

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: Context) -> pb.RevokeKeyResponse:
        self._authorize(context)
        await self._existing(request.id)
        updated = await asyncio.to_thread(self._store.update_key, request.id, {"revoked": True})
        assert updated is not None
        await self._changed()
        return pb.RevokeKeyResponse(api_key=records.key_info(updated))

    async def RotateKey(self, request: pb.RotateKeyRequest, context: Context) -> pb.RotateKeyResponse:
        self._authorize(context)
        current = await self._existing(request.id)
        if current.revoked:
            raise InvalidRequestError(
                "A revoked key cannot be rotated; create a new one.", code="key_revoked", param="id"
            )
        secret, secret_hash, masked = self._new_secret()
        updated = await asyncio.to_thread(
            self._store.update_key, request.id, {"secret_hash": secret_hash, "masked": masked}
        )
        assert updated is not None
        await self._changed()
        return pb.RotateKeyResponse(id=updated.id, key=secret, api_key=records.key_info(updated))

    # ------------------------------------------------------------ projects

    async def CreateProject(self, request: pb.CreateProjectRequest, context: Context) -> pb.CreateProjectResponse:
        self._authorize(context)
        name = self._check_name(request.name.strip())
        project_id = request.id or _slug(name)
        if not project_id:
            raise _bad("name", "is required when id is not given", "ERR_MISSING_FIELD")
        if not _SLUG.match(project_id):
            raise _bad("id", "must be a slug: lowercase letters, digits, - and _, at most 63 characters")
        budget, period = self._check_budget(request.budget_usd, request.budget_period)
        record = ProjectRecord(
            id=project_id,
            name=name or project_id,
            created_at=int(self._clock.now()),
            requests_per_minute=self._check_limit("requests_per_minute", request.requests_per_minute),
            tokens_per_minute=self._check_limit("tokens_per_minute", request.tokens_per_minute),
            budget_usd=budget,
            budget_period=period,
        )
        try:
            await asyncio.to_thread(self._store.create_project, record)
        except DuplicateError as exc:
            raise InvalidRequestError(
                f"A project with id '{project_id}' already exists.", code="project_exists", param="id", http_status=409
            ) from exc
        await self._changed()
        return pb.CreateProjectResponse(project=records.project(record))

    async def ListProjects(self, request: pb.ListProjectsRequest, context: Context) -> pb.ListProjectsResponse:
        self._authorize(context)
        found = await asyncio.to_thread(self._store.list_projects)
        return pb.ListProjectsResponse(projects=[records.project(p) for p in found])

    async def UpdateProject(self, request: pb.UpdateProjectRequest, context: Context) -> pb.UpdateProjectResponse:
        self._authorize(context)
        current = await self._existing_project(request.id)
        changes: dict[str, object] = {}
        if request.HasField("name"):
            name = self._check_name(request.name.strip())
            if not name:
                raise _bad("name", "must not be empty", "ERR_MISSING_FIELD")
            changes["name"] = name
        for limit in ("requests_per_minute", "tokens_per_minute"):
            if request.HasField(limit):
                changes[limit] = self._check_limit(limit, getattr(request, limit))
        if request.HasField("budget_usd") or request.HasField("budget_period"):
            budget = request.budget_usd if request.HasField("budget_usd") else current.budget_usd
            period = request.budget_period if request.HasField("budget_period") else current.budget_period
            changes["budget_usd"], changes["budget_period"] = self._check_budget(budget, period)
        updated = await asyncio.to_thread(self._store.update_project, request.id, changes)
        if updated is None:
            raise _project_not_found(request.id)
        await self._changed()
        return pb.UpdateProjectResponse(project=records.project(updated))


def _project_not_found(project_id: str) -> NotFoundError:
    return NotFoundError(f"No project with id '{project_id}'.", code="project_not_found", param="id")


def _plain(value: struct_pb2.Value) -> object:
    """A ListValue entry as a plain value, so validation can reject non-strings."""
    kind = value.WhichOneof("kind")
    return value.string_value if kind == "string_value" else object()


def register_bootstrap(store: KeyStore, secret: str, pepper: bytes, now: int) -> None:
    """Make secret the bootstrap key (id "bootstrap"), replacing an earlier one."""
    secret_hash, masked = keys.hash_secret(secret, pepper), keys.mask(secret)
    if store.get_key(BOOTSTRAP_ID) is None:
        store.create_key(
            KeyRecord(
                id=BOOTSTRAP_ID,
                name="bootstrap",
                project="default",
                secret_hash=secret_hash,
                masked=masked,
                created_at=now,
            )
        )
    else:
        store.update_key(BOOTSTRAP_ID, {"secret_hash": secret_hash, "masked": masked, "revoked": False})
