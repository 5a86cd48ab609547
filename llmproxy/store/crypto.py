"""Encryption at rest for upstream API keys: AES-256-GCM, stored as ``enc:v1:`` + base64(nonce‖ciphertext).

The format is the upstream proxy's, so a database it wrote can be read here. Values without the prefix
are plaintext written before a key was configured and are returned unchanged.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ("ENCRYPTED_PREFIX", "check_key", "decrypt_api_key", "encrypt_api_key", "is_encrypted")

ENCRYPTED_PREFIX = "enc:v1:"
_NONCE_BYTES = 12
_KEY_BYTES = 32


def check_key(key: bytes | None) -> None:
    """ValueError unless ``key`` is None (no encryption) or 32 bytes (AES-256)."""
    if key is not None and len(key) != _KEY_BYTES:
        raise ValueError(f"ENCRYPTION_KEY must be {_KEY_BYTES} bytes, got {len(key)}")


def _cipher(key: bytes) -> AESGCM:
    check_key(key)
    return AESGCM(key)


def is_encrypted(stored: str) -> bool:
    return stored.startswith(ENCRYPTED_PREFIX)


def encrypt_api_key(key: bytes, plaintext: str) -> str:
    """Encrypt with a fresh random nonce; the empty string stays empty (nothing to hide)."""
    if not plaintext:
        return plaintext
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _cipher(key).encrypt(nonce, plaintext.encode(), None)
    return ENCRYPTED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_api_key(key: bytes | None, stored: str) -> str:
    """Plaintext of a stored value. ValueError if it is encrypted and ``key`` is missing or wrong."""
    if not is_encrypted(stored):
        return stored
    if key is None:
        raise ValueError("an API key in the database is encrypted but ENCRYPTION_KEY is not set")
    try:
        blob = base64.b64decode(stored[len(ENCRYPTED_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("an encrypted API key in the database is not valid base64") from None
    if len(blob) <= _NONCE_BYTES:
        raise ValueError("an encrypted API key in the database is truncated")
    try:
        plain = _cipher(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None)
    except InvalidTag:
        raise ValueError(
            "cannot decrypt an API key: ENCRYPTION_KEY differs from the one that encrypted it"
        ) from None
    return plain.decode()
