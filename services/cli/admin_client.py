"""A small typed client for the gateway's admin REST API and `GET /v1/models`.

The CLI's only way to talk to a running gateway. It takes its base URL and key
from the caller (main.py reads the environment once) and turns every failure
into a `CliError` whose message is fit to print: the server's own message and
request id for an HTTP error, a plain sentence when the gateway cannot be
reached. The key is sent only in the Authorization header and never appears
in a message.

Also here: the two output helpers every command shares (a plain text table and
indented JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast
from urllib.parse import quote

# httpx is imported where it is used: `interlock up`, the long-running supervisor, loads
# this module for its argument parser but never talks HTTP, and httpx costs it ~15 MB.
if TYPE_CHECKING:
    import httpx

DEFAULT_TIMEOUT_SECONDS = 30.0


class CliError(Exception):
    """A failure to report on stderr with exit code 1."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id


class KeyInfo(TypedDict):
    """An API key as the admin API shows it: masked, never its secret."""

    id: str
    name: str
    project: str
    masked: str
    models: list[str]
    plan: str
    requests_per_minute: int
    tokens_per_minute: int
    burst: int
    budget_usd: float
    budget_period: str
    expires_at: NotRequired[str]
    revoked: bool
    created_at: NotRequired[str]


class CreatedKey(TypedDict):
    """The answer to create and rotate: the only place a secret ever appears."""

    id: str
    key: str
    api_key: KeyInfo


class Project(TypedDict):
    """A project and the limits all of its keys share (0 means none)."""

    id: str
    name: str
    created_at: NotRequired[str]
    # int64 fields: proto3 JSON writes them as decimal strings.
    requests_per_minute: str | int
    tokens_per_minute: str | int
    budget_usd: float
    budget_period: str


class Pricing(TypedDict):
    input: float
    output: float
    unit: str


class ModelInfo(TypedDict):
    id: str
    type: str
    provider: str
    owned_by: str
    available: bool
    context_window: NotRequired[int]
    pricing: NotRequired[Pricing]
    capabilities: NotRequired[list[str]]
    dims: NotRequired[int]


def _describe_transport_error(exc: httpx.TransportError) -> str:
    import httpx  # noqa: PLC0415 - lazy, see above

    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host not found"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return type(exc).__name__


class AdminClient:
    """Calls one gateway with one key (the admin key, or an ordinary key for list_models)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx  # noqa: PLC0415 - lazy, see above

        url = _checked_base_url(base_url)
        self.base_url = url
        self._key = key
        self._http = httpx.Client(
            base_url=url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- keys -------------------------------------------------------------

    def create_key(
        self,
        *,
        name: str,
        project: str | None = None,
        models: Sequence[str] = (),
        plan: str | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        burst: int | None = None,
        budget_usd: float | None = None,
        budget_period: str | None = None,
        expires_at: str | None = None,
    ) -> CreatedKey:
        """Create a key; unset arguments are left out so the server's defaults apply."""
        body: dict[str, Any] = {"name": name}
        optional: dict[str, Any] = {
            "project": project,
            "plan": plan,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "burst": burst,
            "budget_usd": budget_usd,
            "budget_period": budget_period,
            "expires_at": expires_at,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if models:
            body["models"] = list(models)
        return cast(CreatedKey, self._request("POST", "/v1/keys", json_body=body))

    def list_keys(self, *, project: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        params = {"include_revoked": "true" if include_revoked else "false"}
        if project:
            params["project"] = project
        answer = self._request("GET", "/v1/keys", params=params)
        return cast(list[KeyInfo], answer.get("keys", []))

    def revoke_key(self, key_id: str) -> KeyInfo:
        return cast(KeyInfo, self._request("DELETE", f"/v1/keys/{_segment(key_id)}"))

    def rotate_key(self, key_id: str) -> CreatedKey:
        return cast(CreatedKey, self._request("POST", f"/v1/keys/{_segment(key_id)}/rotate", json_body={}))

    # --- projects ---------------------------------------------------------

    def create_project(
        self,
        *,
        name: str,
        project_id: str | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: str | None = None,
    ) -> Project:
        """Create a project; unset limits are left out so the server's defaults (none) apply."""
        body: dict[str, Any] = {"name": name}
        if project_id:
            body["id"] = project_id
        body.update(_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period))
        answer = self._request("POST", "/v1/projects", json_body=body)
        return cast(Project, answer["project"])

    def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: str | None = None,
    ) -> Project:
        """Change only the given fields; the rest stay as they are."""
        body: dict[str, Any] = {} if name is None else {"name": name}
        body.update(_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period))
        return cast(Project, self._request("PATCH", f"/v1/projects/{_segment(project_id)}", json_body=body))

    def list_projects(self) -> list[Project]:
        return cast(list[Project], self._request("GET", "/v1/projects").get("projects", []))

    # --- models -----------------------------------------------------------

    def list_models(self, provider: str | None = None, type: str | None = None) -> list[ModelInfo]:
        """The models this client's key may use (needs an ordinary API key, not the admin key)."""
        params = {k: v for k, v in (("provider", provider), ("type", type)) if v}
        return cast(list[ModelInfo], self._request("GET", "/v1/models", params=params).get("data", []))

    # --- plumbing ---------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        import httpx  # noqa: PLC0415 - lazy, see above

        try:
            response = self._http.request(method, path, json=json_body, params=params)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the gateway at {self.base_url} ({_describe_transport_error(exc)}); "
                "is it running (`interlock up`)? Point --url or INTERLOCK_URL at it."
            ) from exc
        if response.status_code >= 400:
            raise self._error(response)
        try:
            payload = response.json()
        except ValueError as exc:
            raise CliError(
                f"the gateway at {self.base_url} answered {method} {path} with something other than JSON "
                f"(HTTP {response.status_code})"
            ) from exc
        if not isinstance(payload, dict):
            raise CliError(f"the gateway answered {method} {path} with unexpected JSON (not an object)")
        return payload

    def _error(self, response: httpx.Response) -> CliError:
        request_id = response.headers.get("x-request-id")
        message = ""
        kind = ""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict):
                message = str(error.get("message") or "")
                kind = str(error.get("type") or "")
            request_id = str(payload.get("request_id") or request_id or "") or None
        if not message:
            text = " ".join(response.text.split())
            message = text[:200] if text else response.reason_phrase or "no details"
        details = ", ".join(
            part
            for part in (kind, f"HTTP {response.status_code}", f"request id {request_id}" if request_id else "")
            if part
        )
        return CliError(f"{self._redact(message)} ({details})", status=response.status_code, request_id=request_id)

    def _redact(self, text: str) -> str:
        # The server never echoes a presented key; be sure anyway.
        return text.replace(self._key, "[redacted]") if self._key else text


def _checked_base_url(raw: str) -> str:
    """http(s)://host[:port][/prefix] without a trailing slash; an SDK-style .../v1 is accepted too."""
    import httpx  # noqa: PLC0415 - lazy, see above

    url = raw.strip().rstrip("/").removesuffix("/v1")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CliError(f"invalid gateway URL {raw!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"invalid gateway URL {raw!r}: expected http://host:port or https://host")
    return url


def _limits(
    requests_per_minute: int | None, tokens_per_minute: int | None, budget_usd: float | None, budget_period: str | None
) -> dict[str, Any]:
    """The limit fields of a project request that were given."""
    given = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "budget_usd": budget_usd,
        "budget_period": budget_period,
    }
    return {k: v for k, v in given.items() if v is not None}


def _segment(value: str) -> str:
    """One URL path segment: an id can never reach another route."""
    return quote(value, safe="")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the header line first."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in (headers, *rows)]
    return "\n".join(lines)


def format_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
