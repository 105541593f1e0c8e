"""API key secrets: generation, keyed hashing, masking and constant-time checks.

Secrets are stored and cached only as HMAC-SHA256 under a server-side pepper,
so a leaked database or cache cannot be replayed. Lookup is by that keyed
hash (useless to an attacker without the pepper), and the final comparison
uses hmac.compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

KEY_PREFIX = "il-"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str, pepper: bytes) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def verify(secret: str, expected_hash: str, pepper: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret, pepper), expected_hash)


def mask(secret: str) -> str:
    """The listing form: first and last four characters, like 0a0e********94c1."""
    body = secret[len(KEY_PREFIX) :] if secret.startswith(KEY_PREFIX) else secret
    if len(body) < 12:
        return "*" * 8
    return f"{body[:4]}********{body[-4:]}"


def presented_secret(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The key a gRPC caller presented: `authorization: Bearer <key>` or `x-api-key`."""
    for name, value in metadata:
        if isinstance(value, bytes):
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and value.strip():
            return value.strip()
    return None
