"""Who may call the admin API: only the holder of the admin key.

The admin key comes from the environment and is kept only as its keyed hash.
A caller presenting an ordinary valid API key is told 403 (known, not
allowed); anyone else 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from services.common import keys
from services.common.errors import AuthenticationError, PermissionDeniedError


class AdminGuard:
    def __init__(self, admin_hash: str, pepper: bytes, is_known_key: Callable[[str], bool]) -> None:
        self._admin_hash = admin_hash
        self._pepper = pepper
        # Tells whether a keyed hash belongs to a live ordinary key.
        self._is_known_key = is_known_key

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        secret = keys.presented_secret(metadata)
        if secret is None:
            raise AuthenticationError("The admin API needs the admin key as 'Authorization: Bearer <key>'.")
        if self._admin_hash and keys.verify(secret, self._admin_hash, self._pepper):
            return
        if self._is_known_key(keys.hash_secret(secret, self._pepper)):
            raise PermissionDeniedError("This API key may not use the admin API.", code="admin_key_required")
        if not self._admin_hash:
            raise PermissionDeniedError(
                "The admin API is disabled: set INTERLOCK_ADMIN_KEY on the catalog service.", code="admin_disabled"
            )
        raise AuthenticationError("Incorrect API key provided.")
