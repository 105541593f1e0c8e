"""API key authentication against the watched key cache (no catalog call)."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from interlock.catalog.v1 import catalog_pb2 as cpb
from services.common import keys
from services.common.catalog_cache import CatalogCache
from services.common.clock import Clock
from services.common.errors import AuthenticationError


def presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        # "Token" is how aiXplain's SDK sends its key to the platform API.
        if scheme.lower() in ("bearer", "token") and token.strip():
            return token.strip()
    api_key = headers.get("x-api-key")  # header lookup is case-insensitive: X-API-Key too
    return api_key.strip() if api_key and api_key.strip() else None


class Authenticator:
    def __init__(self, cache: CatalogCache, pepper: bytes, clock: Clock) -> None:
        self._cache = cache
        self._pepper = pepper
        self._clock = clock

    def authenticate(self, headers: Headers) -> cpb.ApiKey:
        secret = presented_key(headers)
        if secret is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
        digest = keys.hash_secret(secret, self._pepper)
        record = self._cache.keys_by_hash.get(digest)
        # The dict lookup is by keyed hash; the final check is constant-time all the same
        # (on the digest already computed: hashing twice per request is measurable).
        if record is None or not hmac.compare_digest(digest, record.secret_hash):
            raise AuthenticationError("Incorrect API key provided.")
        if record.revoked:
            raise AuthenticationError("This API key has been revoked.")
        if record.expires_at and record.expires_at <= self._clock.now():
            raise AuthenticationError("This API key has expired.")
        return record
