"""Who is asking for usage: the admin key, or an API key with its project.

The usage APIs are served by this service itself (the edge and Envoy only
transcode), so it authenticates from the gRPC metadata against its own watched
copy of the key records, with no catalog call per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from interlock.catalog.v1 import catalog_pb2 as cpb
from services.common import keys
from services.common.catalog_cache import CatalogCache
from services.common.clock import Clock
from services.common.errors import AuthenticationError


@dataclass(frozen=True)
class Caller:
    """The admin (key is None), or the holder of an API key."""

    key: cpb.ApiKey | None

    @property
    def admin(self) -> bool:
        return self.key is None


ADMIN = Caller(key=None)


class CallerResolver:
    def __init__(self, cache: CatalogCache, pepper: bytes, admin_hash: str, clock: Clock) -> None:
        self._cache = cache
        self._pepper = pepper
        self._admin_hash = admin_hash
        self._clock = clock

    def resolve(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        secret = keys.presented_secret(metadata)
        if secret is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
        if self._admin_hash and keys.verify(secret, self._admin_hash, self._pepper):
            return ADMIN
        record = self.key_for_secret(secret)
        if record is None:
            raise AuthenticationError("Incorrect API key provided.")
        if record.revoked:
            raise AuthenticationError("This API key has been revoked.")
        if record.expires_at and record.expires_at <= self._clock.now():
            raise AuthenticationError("This API key has expired.")
        return Caller(key=record)

    def key_for_secret(self, secret: str) -> cpb.ApiKey | None:
        record = self._cache.keys_by_hash.get(keys.hash_secret(secret, self._pepper))
        # The dict lookup is by keyed hash; the final check is constant-time all the same.
        if record is None or not keys.verify(secret, record.secret_hash, self._pepper):
            return None
        return record

    def key_by_id(self, key_id: str) -> cpb.ApiKey | None:
        for record in self._cache.keys_by_hash.values():
            if record.id == key_id:
                return record
        return None

    def masked_by_id(self) -> dict[str, str]:
        """Masked form of every known key, by id: what listings show instead of ids or secrets."""
        return {record.id: record.masked for record in self._cache.keys_by_hash.values()}
