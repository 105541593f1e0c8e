"""API key secrets: keyed hashing, verification, masking and generation."""

from __future__ import annotations

import hashlib
import hmac

from services.common.keys import KEY_PREFIX, hash_secret, mask, new_key_id, new_secret, verify

PEPPER = b"pepper-one"
SECRET = "il-0a0eABCDEFGHijklmnopQRSTUVwxyz12345694c1"


def test_hash_is_hmac_sha256_under_the_pepper() -> None:
    digest = hash_secret(SECRET, PEPPER)
    assert digest == hmac.new(PEPPER, SECRET.encode(), hashlib.sha256).hexdigest()
    assert digest != hashlib.sha256(SECRET.encode()).hexdigest()  # not a plain hash
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_hash_depends_on_pepper_and_secret() -> None:
    assert hash_secret(SECRET, PEPPER) == hash_secret(SECRET, PEPPER)
    assert hash_secret(SECRET, PEPPER) != hash_secret(SECRET, b"pepper-two")
    assert hash_secret(SECRET, PEPPER) != hash_secret(SECRET + "x", PEPPER)


def test_verify() -> None:
    stored = hash_secret(SECRET, PEPPER)
    assert verify(SECRET, stored, PEPPER) is True
    assert verify(SECRET[:-1] + "0", stored, PEPPER) is False
    assert verify(SECRET, stored, b"other-pepper") is False
    assert verify(SECRET, stored.upper(), PEPPER) is False
    assert verify(SECRET, "", PEPPER) is False


def test_mask_long_key_shows_only_four_and_four() -> None:
    masked = mask(SECRET)
    assert masked == "0a0e********94c1"
    body = SECRET[len(KEY_PREFIX) :]
    assert body[4:-4] not in masked
    for i in range(4, len(body) - 7):
        assert body[i : i + 4] not in masked, body[i : i + 4]


def test_mask_generated_secret() -> None:
    secret = new_secret()
    body = secret[len(KEY_PREFIX) :]
    masked = mask(secret)
    assert masked == body[:4] + "*" * 8 + body[-4:]
    assert secret not in masked and body[4:-4] not in masked


def test_mask_boundary_and_short_secrets() -> None:
    assert mask("il-" + "a" * 11) == "********"
    assert mask("il-abcdefghijkl") == "abcd********ijkl"
    assert mask("il-") == "********"
    assert mask("short") == "********"
    assert mask("sk-abcdefghijklmnop") == "sk-a********mnop"  # no il- prefix: whole string is the body


def test_new_secret_prefix_length_and_uniqueness() -> None:
    secrets = {new_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith(KEY_PREFIX)
        assert len(secret) - len(KEY_PREFIX) >= 43  # 32 random bytes, urlsafe base64
        assert all(c.isalnum() or c in "-_" for c in secret[len(KEY_PREFIX) :])


def test_new_key_id() -> None:
    ids = {new_key_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("key_") and len(i) == 20 for i in ids)
